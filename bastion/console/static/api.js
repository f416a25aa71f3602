// The console's one way to the gateway: the admin API and the session endpoints, with the
// session cookie (HttpOnly: this script never sees it) and the CSRF token the session answer
// gave. The token lives in this module's memory only, never in storage: a reload asks the
// server for the session again.

let current = null;
const listeners = new Set();

/** A refusal or failure, with the server's message (shown as text, never as HTML). */
export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The signed-in session ({principal, role, permissions, csrf, expires_at, method}) or null. */
export function session() {
  return current;
}

/** Calls back with the new session (or null) whenever it changes. */
export function onSessionChange(listener) {
  listeners.add(listener);
}

function setSession(value) {
  current = value;
  for (const listener of listeners) listener(value);
}

/** Whether the session's permissions include this one (the server decides anyway). */
export function can(permission) {
  const permissions = current ? current.permissions || [] : [];
  return permissions.includes('*') || permissions.includes(permission);
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || body.error.type;
    }
  } catch {
    // not JSON: the status line says enough
  }
  return new ApiError(response.status, message, code);
}

async function send(method, url, body, headers = {}) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json', ...headers } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (exc) {
    throw new ApiError(0, `The gateway could not be reached (${exc.message}).`);
  }
  if (!response.ok) throw await errorOf(response);
  return response.status === 204 ? null : response.json();
}

let operations;

/** The admin operations by id (operations.json, made from the API's OpenAPI document). */
function table() {
  if (!operations) {
    operations = send('GET', '/ui/operations.json').catch((exc) => {
      operations = undefined;  // try again on the next call
      throw exc;
    });
  }
  return operations;
}

function given(value) {
  return value !== undefined && value !== null && value !== '';
}

/** The operation's URL and body from its declared parameters; values it does not declare are refused. */
function request(op, values) {
  const unknown = Object.keys(values).filter((name) =>
    !op.query.includes(name) && !op.body.includes(name) && !op.path.includes(`{${name}}`));
  if (unknown.length) throw new ApiError(0, `Not a parameter of this operation: ${unknown.join(', ')}.`);
  // Path segments are names: encoded, and never one that the gateway, which resolves escapes
  // and dot segments in a path, would read as more than one segment (../keys).
  const path = op.path.replace(/\{(\w+)\}/g, (_, name) => {
    const value = String(values[name] ?? '');
    if (!value || value === '.' || value === '..' || /[/\\]/.test(value)) {
      throw new ApiError(0, `Not a valid ${name}: ${value}`);
    }
    return encodeURIComponent(value);
  });
  const query = new URLSearchParams();
  for (const name of op.query) {
    const value = values[name];
    if (given(value)) query.set(name, Array.isArray(value) ? value.join(',') : String(value));
  }
  const body = {};
  for (const name of op.body) if (given(values[name])) body[name] = values[name];
  const text = query.toString();
  return { url: text ? `${path}?${text}` : path, body: op.body.length ? body : undefined };
}

/**
 * One admin API call by its operation id, as the CLI names it: call('users.list'),
 * call('keys.create', {user: 'ada', models: ['llama-*']}), call('usage', {by: 'model'}).
 * A 401 ends the session: back to sign-in.
 */
export async function call(operation, values = {}) {
  if (!current) throw new ApiError(401, 'Not signed in.');
  const op = (await table())[operation];
  if (!op) throw new ApiError(0, `The gateway has no operation ${operation}.`);
  const { url, body } = request(op, values);
  try {
    return await send(op.method, url, body, { 'X-CSRF-Token': current.csrf });
  } catch (exc) {
    if (exc.status === 401) setSession(null);
    throw exc;
  }
}

/** Asks whether the cookie names a live session; sets it (or null) and returns it. */
export async function resume() {
  try {
    setSession(await send('GET', '/ui/api/session'));
  } catch (exc) {
    if (exc.status !== 401) throw exc;
    setSession(null);
  }
  return current;
}

/** Exchanges an API key for a session (the key is sent once and not kept). */
export async function signIn(key) {
  setSession(await send('POST', '/ui/api/session', { key }));
  return current;
}

/** Ends the session on the server, then here (even if the server was unreachable). */
export async function signOut() {
  try {
    if (current) await send('DELETE', '/ui/api/session', undefined, { 'X-CSRF-Token': current.csrf });
  } finally {
    setSession(null);
  }
}

/** Whether the sign-in page should offer OIDC. */
export async function oidcEnabled() {
  try {
    const answer = await send('GET', '/ui/api/oidc/config');
    return Boolean(answer && answer.enabled);
  } catch {
    return false;
  }
}

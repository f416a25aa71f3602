// Keys: create (with models, routes, networks, expiry), rotate with an overlap, revoke.
// A new key's secret is shown once, in this page's memory, and dropped on the next draw.

import { call } from './api.js';
import { append, badge, card, confirmDialog, field, fmt, formValues, h, select, splitList, stamp, table } from './dom.js';
import { head, reloading, toggle } from './page.js';

const EXPIRIES = [['', 'Never'], ['86400', '1 day'], ['604800', '7 days'], ['2592000', '30 days'],
  ['7776000', '90 days'], ['31536000', '1 year'], ['date', 'On a date…']];
const OVERLAPS = [['0', 'None: the old key stops now'], ['300', '5 minutes'], ['3600', '1 hour'],
  ['86400', '1 day'], ['604800', '7 days']];
const STATES = { active: 'ok', expired: 'warn', revoked: 'bad' };

let issued = null;  // {key, secret} just created or rotated, shown once

function keyBody(v) {
  const body = { user: v.user, name: v.name || undefined, models: splitList(v.models),
    routes: splitList(v.routes), networks: splitList(v.networks) };
  if (v.expiry === 'date' && v.date) body.expires_at = Date.parse(`${v.date}T00:00:00Z`) / 1000;
  else if (v.expiry && v.expiry !== 'date') body.expires_in = Number(v.expiry);
  return body;
}

function createForm(users, act) {
  const date = h('input', { name: 'date', type: 'date' });
  const expiry = select('expiry', EXPIRIES, '');
  const dateField = field('Expires on (UTC)', date);
  dateField.hidden = true;
  expiry.addEventListener('change', () => { dateField.hidden = expiry.value !== 'date'; });
  const form = h('form', { class: 'card form-grid', id: 'key-form' },
    h('h2', {}, 'New key'),
    field('User', select('user', users.map((u) => [u.name, u.name]), users[0] && users[0].name)),
    field('Name', h('input', { name: 'name', maxlength: 128, placeholder: 'default', autocomplete: 'off' })),
    field('Models', h('input', { name: 'models', placeholder: 'all of the user’s' }), 'Names or globs, comma-separated: llama-3-*, gemma-3-270m'),
    field('Routes', h('input', { name: 'routes', placeholder: 'all of the user’s' }), 'Permissions: chat, completions, embeddings, models…'),
    field('Networks', h('input', { name: 'networks', placeholder: 'anywhere the user may' }), 'CIDR blocks: 10.0.0.0/8'),
    field('Expires', expiry), dateField,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Create key')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    act(async () => { issued = await call('keys.create', keyBody(formValues(form))); return issued; },
      (r) => `Created key ${r.key.id} for ${r.key.user}.`);
  });
  return form;
}

function copyButton(input) {
  const button = h('button', { type: 'button', class: 'primary', id: 'copy-secret' }, 'Copy');
  button.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(input.value);
    } catch {
      input.select();  // no clipboard API (plain HTTP off localhost): leave it selected to copy
      document.execCommand('copy');
    }
    button.textContent = 'Copied';
  });
  return button;
}

function secretPanel(result) {
  const input = h('input', { id: 'secret', readonly: true, value: result.secret, spellcheck: 'false', 'aria-label': 'The new key' });
  const panel = h('section', { class: 'card secret', id: 'secret-panel' },
    h('h2', {}, `The key ${result.key.name} for ${result.key.user}`),
    h('p', {}, 'Copy it now: it is shown this once. Bastion keeps only its hash and cannot show it again.'),
    h('div', { class: 'secret-row' }, input, copyButton(input)));
  append(panel, [h('button', { type: 'button', class: 'small', onclick: () => panel.remove() }, 'I have copied it')]);
  return panel;
}

function askOverlap(key) {
  return new Promise((resolve) => {
    const overlap = select('overlap', OVERLAPS, '3600', 'Overlap');
    const dialog = h('dialog', { class: 'confirm' });
    const done = (value) => { dialog.close(); dialog.remove(); resolve(value); };
    append(dialog, [h('p', {}, `Rotate ${key.prefix}… (${key.name}, ${key.user})? A new key is issued; the old one keeps working for:`),
      overlap, h('div', { class: 'actions' },
        h('button', { type: 'button', onclick: () => done(null) }, 'Cancel'),
        h('button', { type: 'button', class: 'primary', onclick: () => done(Number(overlap.value)) }, 'Rotate'))]);
    dialog.addEventListener('cancel', () => done(null));
    document.body.append(dialog);
    dialog.showModal();
  });
}

function actions(key, act) {
  if (key.state === 'revoked') return null;
  const rotate = h('button', { type: 'button', class: 'small', onclick: async () => {
    const overlap = await askOverlap(key);
    if (overlap === null) return;
    act(async () => { issued = await call('keys.rotate', { id: key.id, overlap }); return issued; },
      (r) => `Rotated ${key.id}: the new key is ${r.key.id}.`);
  } }, 'Rotate');
  const revoke = h('button', { type: 'button', class: 'small danger', 'data-revoke': key.id, onclick: async () => {
    if (await confirmDialog(`Revoke ${key.prefix}… (${key.name}, ${key.user})? It stops working at once.`, 'Revoke')) {
      act(() => call('keys.revoke', { id: key.id }), `Revoked ${key.id}.`);
    }
  } }, 'Revoke');
  return h('div', { class: 'row-actions' }, rotate, revoke);
}

function restrictions(key) {
  const parts = [['models', key.models], ['routes', key.routes], ['networks', key.networks]]
    .filter(([, list]) => list && list.length).map(([name, list]) => h('div', {}, h('span', { class: 'muted' }, `${name}: `), list.join(', ')));
  return parts.length ? parts : h('span', { class: 'muted' }, 'as the user');
}

function keyTable(keys, act) {
  return table([
    { label: 'Key', value: (k) => h('div', {}, h('code', {}, `${k.prefix}…`), h('div', { class: 'muted small' }, k.id)) },
    { label: 'User', value: (k) => k.user },
    { label: 'Name', value: (k) => k.name },
    { label: 'State', value: (k) => badge(k.state, STATES[k.state]) },
    { label: 'Limited to', value: restrictions },
    { label: 'Expires', value: (k) => (k.expires_at ? stamp(k.expires_at) : 'never') },
    { label: 'Last used', value: (k) => stamp(k.last_used_at) },
    { label: 'Created', value: (k) => h('div', {}, h('span', { class: 'nowrap' }, fmt.day(k.created_at)), h('div', { class: 'muted small' }, `by ${k.created_by}`)) },
    { label: '', value: (k) => actions(k, act) },
  ], keys, 'No keys.');
}

export async function render(main, params, current) {
  const all = params.all === '1';
  const draw = reloading(main, current, async (act) => {
    const [keys, users] = await Promise.all([
      call('keys.list', { include_revoked: all }), call('users.list')]);
    const [button, form] = toggle('New key', createForm(users.data, act));
    const shown = issued;
    issued = null;
    return [
      head('Keys', button),
      shown ? secretPanel(shown) : null,
      form,
      card(null, h('div', { class: 'segmented' },
        h('a', { href: '#keys', class: all ? null : 'active' }, 'Usable'),
        h('a', { href: '#keys?all=1', class: all ? 'active' : null }, 'All, with revoked')),
      keyTable(keys.data, act)),
    ];
  });
  await draw();
}

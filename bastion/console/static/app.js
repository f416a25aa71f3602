// The console's shell: the sidebar, the hash router, and the session's coming and going.
// Each page is a module exporting render(main, params); this file only picks one.

import { can, onSessionChange, resume, session, signOut } from './api.js';
import { h, notice, replace } from './dom.js';
import * as audit from './audit.js';
import * as keys from './keys.js';
import * as limits from './limits.js';
import * as overview from './overview.js';
import * as signin from './signin.js';
import * as teams from './teams.js';
import * as usage from './usage.js';
import * as users from './users.js';

// need: 'admin' pages manage identities; 'view' pages are open to the read-only `console`
// permission as well. The server enforces the same split; hiding is only a courtesy.
const ROUTES = {
  overview: { title: 'Overview', page: overview, need: 'view' },
  usage: { title: 'Usage', page: usage, need: 'view' },
  users: { title: 'Users', page: users, need: 'admin' },
  teams: { title: 'Teams', page: teams, need: 'admin' },
  keys: { title: 'Keys', page: keys, need: 'admin' },
  audit: { title: 'Audit trail', page: audit, need: 'admin' },
  limits: { title: 'Limits', page: limits, need: 'view' },
};

function allowed(route) {
  return route.need === 'view' ? can('admin') || can('console') : can('admin');
}

/** The hash as a route name and its parameters: #audit?actor=ada -> ['audit', {actor: 'ada'}]. */
function location_() {
  const [name, query] = window.location.hash.replace(/^#/, '').split('?');
  return [name || 'overview', Object.fromEntries(new URLSearchParams(query || ''))];
}

const root = document.getElementById('root');
const main = h('main', { id: 'main', tabindex: '-1' });
let rendering = 0;
let expiry;

function sidebar(active) {
  const me = session();
  const links = Object.entries(ROUTES).filter(([, route]) => allowed(route)).map(([name, route]) =>
    h('a', {
      href: `#${name}`, class: name === active ? 'active' : null, 'data-route': name,
      'aria-current': name === active ? 'page' : null,
    }, route.title));
  return h('aside', { class: 'sidebar' },
    h('a', { class: 'brand', href: '#overview' }, h('img', { src: '/ui/logo.svg', alt: '' }), 'Bastion'),
    h('nav', {}, links),
    h('div', { class: 'who' },
      h('span', { class: 'principal', id: 'principal' }, me.principal),
      h('span', { class: 'role' }, `${me.role} · ${me.method === 'oidc' ? 'OIDC' : 'API key'}`),
      h('button', { type: 'button', id: 'signout', onclick: leave }, 'Sign out')));
}

async function leave() {
  try {
    await signOut();
  } finally {
    window.location.hash = '#signin';
  }
}

async function show() {
  const ticket = ++rendering;
  const [name, params] = location_();
  if (!session()) {
    // A link to a page (#keys) opens that page once signed in.
    const wanted = name === 'signin' ? 'overview' : window.location.hash.slice(1);
    replace(root, signin.view(name === 'signin' ? params : {}, () => go(wanted)));
    return;
  }
  const route = Object.hasOwn(ROUTES, name) ? ROUTES[name] : null;
  if (!route || !allowed(route)) {
    const first = Object.keys(ROUTES).find((n) => allowed(ROUTES[n]));
    if (first) go(first);
    else replace(root, notice('This session may not use any page of the console.'));
    return;
  }
  document.title = `${route.title} · Bastion`;
  replace(main, h('p', { class: 'loading' }, 'Loading…'));
  replace(root, h('div', { class: 'shell' }, sidebar(name), main));
  try {
    await route.page.render(main, params, () => ticket === rendering);
  } catch (exc) {
    if (ticket === rendering && session()) replace(main, h('h1', {}, route.title), notice(exc.message));
  }
}

function go(name) {
  if (window.location.hash === `#${name}`) show();
  else window.location.hash = `#${name}`;
}

onSessionChange((value) => {
  clearTimeout(expiry);
  if (!value) {
    // Signed out, or a call answered 401 (session expired or revoked): back to sign-in.
    if (!window.location.hash.startsWith('#signin')) window.location.hash = '#signin';
    else show();
    return;
  }
  const left = value.expires_at * 1000 - Date.now();
  if (left > 0) expiry = setTimeout(resume, Math.min(left + 1000, 2 ** 31 - 1));
});

window.addEventListener('hashchange', show);

resume().then(show, (exc) => replace(root, notice(`The gateway did not answer: ${exc.message}`)));

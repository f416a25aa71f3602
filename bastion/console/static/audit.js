// The audit trail, newest first, with filters kept in the address (#audit?actor=ada).

import { call } from './api.js';
import { badge, card, field, fmt, h, replace, select, stamp, table } from './dom.js';
import { now } from './periods.js';
import { head } from './page.js';

const SINCE = [['3600', 'Last hour'], ['86400', 'Last 24 hours'], ['604800', 'Last 7 days'],
  ['2592000', 'Last 30 days'], ['', 'All time']];
const OUTCOMES = [['', 'Any outcome'], ['ok', 'ok'], ['denied', 'denied'], ['failed', 'failed']];
const LIMITS = [['50', '50'], ['100', '100'], ['500', '500'], ['2000', '2000']];
const TONES = { ok: 'ok', denied: 'warn', failed: 'bad' };

function filters(params) {
  const form = h('form', { class: 'card filters', id: 'audit-filters' },
    field('Since', select('since', SINCE, params.since ?? '86400')),
    field('Actor', h('input', { name: 'actor', value: params.actor || '', placeholder: 'any' })),
    field('Action', h('input', { name: 'action', value: params.action || '', placeholder: 'key. or user.create' })),
    field('Outcome', select('outcome', OUTCOMES, params.outcome || '')),
    field('Rows', select('limit', LIMITS, params.limit || '100')),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Apply')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const chosen = new URLSearchParams();
    for (const [name, value] of new FormData(form)) chosen.set(name, String(value).trim());
    window.location.hash = `#audit?${chosen}`;
  });
  return form;
}

function shown(name, value) {
  if (name.endsWith('_at') && typeof value === 'number') return `${fmt.time(value)}Z`;
  return typeof value === 'string' ? value : JSON.stringify(value);
}

function detail(event) {
  if (!event.detail || !Object.keys(event.detail).length) return '';
  return h('div', { class: 'detail' }, Object.entries(event.detail)
    .map(([k, v]) => h('code', {}, `${k}=${shown(k, v)}`)));
}

export async function render(main, params, current) {
  const since = params.since ?? '86400';
  const query = {
    since: since ? now() - Number(since) : undefined,
    actor: params.actor, action: params.action, outcome: params.outcome, limit: params.limit || '100',
  };
  const events = await call('audit', query);
  if (!current()) return;
  replace(main, head('Audit trail'), filters(params), card(null, table([
    { label: 'When (UTC)', value: (e) => stamp(e.at) },
    { label: 'Actor', value: (e) => h('div', {}, e.actor, h('div', { class: 'muted small' }, e.credential)) },
    { label: 'Action', value: (e) => h('code', {}, e.action) },
    { label: 'Target', value: (e) => e.target },
    { label: 'Outcome', value: (e) => badge(e.status ? `${e.outcome} ${e.status}` : e.outcome, TONES[e.outcome]) },
    { label: 'From', value: (e) => h('div', {}, e.address,
      h('div', { class: 'muted small', title: `request ${e.request_id}` }, e.request_id.slice(0, 12))) },
    { label: 'Detail', class: 'wide-cell', value: detail },
  ], events.data, 'No events match.')));
}

// Overview: today's and this month's totals, the last day by hour, and upstream health.

import { call } from './api.js';
import { stackedBars } from './chart.js';
import { badge, card, fmt, h, notice, replace, table } from './dom.js';
import { buckets, now, startOfDay, startOfMonth, totals } from './periods.js';

function tiles(label, sum) {
  const items = [
    ['Requests', fmt.int(sum.requests)],
    ['Tokens', fmt.int(sum.total_tokens)],
    ['Errors', fmt.int(sum.errors)],
    [sum.priced ? `Spend (${sum.currency})` : 'Spend', sum.priced ? fmt.money(sum.cost) : 'no prices set'],
  ];
  return h('section', { class: 'tiles', 'data-period': label },
    h('h2', {}, label),
    h('div', { class: 'tile-row' }, items.map(([name, value]) =>
      h('div', { class: 'tile', 'data-stat': name.split(' ')[0].toLowerCase() },
        h('span', { class: 'tile-label' }, name),
        h('span', { class: sum.priced || !name.startsWith('Spend') ? 'tile-value' : 'tile-note' }, value)))));
}

function lastDay(rows) {
  const since = now() - 23 * 3600;
  const values = new Map(rows.map((r) => [`${r.period}|${r.model}`, r.requests]));
  const sums = new Map();
  for (const r of rows) sums.set(r.model, (sums.get(r.model) || 0) + r.requests);
  const models = [...sums.keys()].sort((a, b) => sums.get(b) - sums.get(a) || a.localeCompare(b));
  return card('Requests in the last 24 hours, by model', stackedBars({
    title: 'Requests per hour by model',
    buckets: buckets('hour', since), series: models,
    value: (t, m) => values.get(`${t}|${m}`) || 0,
    labelOf: fmt.hour, format: fmt.compact,
  }));
}

function healthTone(model) {
  if (model.total === 0 || model.healthy === 0) return 'bad';
  return model.healthy < model.total ? 'warn' : 'ok';
}

function upstreamState(u) {
  if (u.ejected) return badge('ejected', 'bad');
  if (!u.available) return badge(u.checked && !u.healthy ? 'down' : 'unavailable', 'bad');
  return badge(u.checked ? 'up' : 'up (unchecked)', 'ok');
}

function upstreamTable(models) {
  return table([
    { label: 'Model', value: (m) => h('span', { class: 'strong' }, m.model) },
    { label: 'Health', value: (m) => badge(`${m.healthy} of ${m.total} healthy`, healthTone(m)) },
    { label: 'Upstreams', value: (m) => h('ul', { class: 'plain' }, m.upstreams.map((u) =>
      h('li', {}, upstreamState(u), ' ', h('code', {}, u.name),
        h('span', { class: 'muted small' }, ` · ${fmt.int(u.requests)} requests, ${fmt.int(u.errors)} errors, ${u.outstanding} in flight`)))) },
  ], models, 'No models are configured.');
}

async function health() {
  try {
    const answer = await call('upstreams');
    return card('Upstream health', upstreamTable(answer.data || []));
  } catch (exc) {
    return card('Upstream health', notice(exc.message));
  }
}

export async function render(main, _params, current) {
  const month = startOfMonth();
  const today = startOfDay();
  const [days, hours, upstreams] = await Promise.all([
    call('usage', { by: 'model', period: 'day', since: month }),
    call('usage', { by: 'model', period: 'hour', since: now() - 24 * 3600 }),
    health(),
  ]);
  if (!current()) return;
  const rows = days.data;
  replace(main,
    h('header', { class: 'page-head' }, h('h1', {}, 'Overview'),
      h('span', { class: 'muted' }, `Times in UTC · ${fmt.time(now())}`)),
    h('div', { class: 'grid-2' },
      tiles('Today', totals(rows.filter((r) => r.period >= today))),
      tiles('This month', totals(rows))),
    lastDay(hours.data),
    upstreams);
}

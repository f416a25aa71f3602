// Limits: what is configured per bucket (docs/limits.md), and who is nearest to a budget.

import { call } from './api.js';
import { badge, card, fmt, h, replace, table } from './dom.js';
import { head } from './page.js';

const SCOPES = {
  per_key: 'Each key', per_user: 'Each user', per_team: 'Each team', per_model: 'Each model',
  all: 'Everything together', keys: 'Key', users: 'User', roles: 'Role', teams: 'Team', models: 'Model',
};
const BUDGETS = {
  tokens_per_day: 'tokens today', tokens_per_month: 'tokens this month',
  cost_per_day: 'spend today', cost_per_month: 'spend this month',
};

function meter(fraction) {
  const bar = h('span', { class: 'meter-fill' });
  // The width through the CSSOM: allowed under style-src 'self', unlike a style attribute.
  bar.style.width = `${Math.min(100, Math.max(0, fraction * 100)).toFixed(1)}%`;
  const tone = fraction >= 1 ? 'bad' : fraction >= 0.8 ? 'warn' : 'ok';
  return h('span', { class: 'meter-wrap' }, h('span', { class: `meter ${tone}` }, bar), fmt.percent(fraction));
}

function amount(budget, value, currency) {
  return budget.startsWith('cost') ? fmt.money(value, currency) : fmt.int(value);
}

function nearest(rows, currency) {
  return table([
    { label: 'Who', value: (r) => h('span', {}, h('span', { class: 'muted' }, `${r.bucket} `), h('span', { class: 'strong' }, r.name)) },
    { label: 'Budget', value: (r) => BUDGETS[r.budget] || r.budget },
    { label: 'Used', class: 'num', value: (r) => amount(r.budget, r.used, currency) },
    { label: 'Of', class: 'num', value: (r) => amount(r.budget, r.limit, currency) },
    { label: '', value: (r) => meter(r.fraction) },
  ], rows, 'No budget has been used yet (or none is configured).');
}

function setting(values, name, format = fmt.int) {
  return values[name] === undefined ? '—' : format(values[name]);
}

function buckets(rows, currency) {
  const money = (n) => fmt.money(n, currency);
  return table([
    { label: 'Applies to', value: (b) => (b.name ? h('span', {}, `${SCOPES[b.scope]} `, h('span', { class: 'strong' }, b.name)) : SCOPES[b.scope] || b.scope) },
    { label: 'Requests/min', class: 'num', value: (b) => setting(b.limits, 'requests_per_minute') },
    { label: 'Burst', class: 'num', value: (b) => setting(b.limits, 'burst') },
    { label: 'Tokens/min', class: 'num', value: (b) => setting(b.limits, 'tokens_per_minute') },
    { label: 'Concurrency', class: 'num', value: (b) => setting(b.limits, 'concurrency') },
    { label: 'Tokens/day', class: 'num', value: (b) => setting(b.limits, 'tokens_per_day') },
    { label: 'Tokens/month', class: 'num', value: (b) => setting(b.limits, 'tokens_per_month') },
    { label: 'Spend/day', class: 'num', value: (b) => setting(b.limits, 'cost_per_day', money) },
    { label: 'Spend/month', class: 'num', value: (b) => setting(b.limits, 'cost_per_month', money) },
    { label: 'Counts', value: (b) => b.limits.count },
  ], rows, 'No limits are configured: every request is admitted.');
}

export async function render(main, _params, current) {
  const answer = await call('limits');
  if (!current()) return;
  replace(main,
    head('Limits', badge(`counted in ${answer.backend === 'redis' ? 'Redis' : 'memory'}`, 'info')),
    card('Nearest to a budget', nearest(answer.nearest, answer.currency),
      h('p', { class: 'muted small' }, 'From the usage records, which are written about a second behind.')),
    card('Configured limits', buckets(answer.buckets, answer.currency)));
}

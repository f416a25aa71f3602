// Usage over time: tokens, requests and (when prices are set) spend per hour or day, stacked
// by model, user or team; each chart has its numbers in a table below and a CSV export.

import { call } from './api.js';
import { stackedBars } from './chart.js';
import { card, downloadCsv, fmt, h, replace, select, table } from './dom.js';
import { buckets, now, SECONDS } from './periods.js';

const RANGES = [['1', 'Last 24 hours'], ['7', 'Last 7 days'], ['30', 'Last 30 days'], ['90', 'Last 90 days']];
const PERIODS = [['hour', 'per hour'], ['day', 'per day']];
const GROUPS = [['model', 'by model'], ['user', 'by user'], ['team', 'by team']];
const NONE = '(none)';

function options(params) {
  const pick = (value, choices, fallback) => (choices.some(([v]) => v === value) ? value : fallback);
  const days = pick(params.days, RANGES, '7');
  return {
    days,
    period: pick(params.period, PERIODS, days === '1' ? 'hour' : 'day'),
    by: pick(params.by, GROUPS, 'model'),
  };
}

function controls(chosen) {
  const form = h('form', { class: 'controls', id: 'usage-controls' },
    select('days', RANGES, chosen.days, 'Range'), select('period', PERIODS, chosen.period, 'Period'),
    select('by', GROUPS, chosen.by, 'Stacked'));
  form.addEventListener('change', () => {
    const values = new URLSearchParams(new FormData(form));
    window.location.hash = `#usage?${values}`;
  });
  return form;
}

/** The rows as a grid: value(period, group) of one metric, the groups sorted by their total. */
function pivot(rows, by, metric) {
  const cells = new Map();
  const sums = new Map();
  for (const row of rows) {
    const group = row[by] || NONE;
    const key = `${row.period}|${group}`;
    const amount = row[metric] || 0;
    cells.set(key, (cells.get(key) || 0) + amount);
    sums.set(group, (sums.get(group) || 0) + amount);
  }
  const groups = [...sums.keys()].sort((a, b) => sums.get(b) - sums.get(a) || a.localeCompare(b));
  return { groups, value: (t, g) => cells.get(`${t}|${g}`) || 0 };
}

function chartCard(spec) {
  const { title, metric, rows, chosen, since, format } = spec;
  const grid = pivot(rows, chosen.by, metric);
  const periods = buckets(chosen.period, since);
  const labelOf = chosen.period === 'hour' ? fmt.hour : fmt.day;
  const used = periods.filter((t) => grid.groups.some((g) => grid.value(t, g))).reverse();
  const total = (t) => grid.groups.reduce((sum, g) => sum + grid.value(t, g), 0);
  const columns = [
    { label: chosen.period === 'hour' ? 'Hour (UTC)' : 'Day (UTC)', class: 'nowrap', value: (t) => (chosen.period === 'hour' ? fmt.time(t) : fmt.day(t)) },
    ...grid.groups.map((g) => ({ label: g, class: 'num', value: (t) => format(grid.value(t, g)) })),
    { label: 'Total', class: 'num strong', value: (t) => format(total(t)) },
  ];
  const exportCsv = () => downloadCsv(`bastion-${metric}-${chosen.period}-by-${chosen.by}.csv`,
    ['period_start_utc', ...grid.groups, 'total'],
    used.map((t) => [new Date(t * 1000).toISOString(), ...grid.groups.map((g) => grid.value(t, g)), total(t)]));
  return h('section', { class: 'card chart-card', 'data-metric': metric },
    h('div', { class: 'card-head' }, h('h2', {}, title),
      h('button', { type: 'button', class: 'small', 'data-csv': metric, onclick: exportCsv }, 'Download CSV')),
    stackedBars({ title, buckets: periods, series: grid.groups, value: grid.value, labelOf, format }),
    h('details', { class: 'numbers', open: true }, h('summary', {}, 'Numbers'),
      table(columns, used, 'No usage in this range.')));
}

export async function render(main, params, current) {
  const chosen = options(params);
  const since = now() - Number(chosen.days) * SECONDS.day;
  const answer = await call('usage', { by: chosen.by, period: chosen.period, since });
  if (!current()) return;
  const rows = answer.data;
  const priced = rows.find((r) => r.cost !== undefined);
  const common = { rows, chosen, since };
  replace(main,
    h('header', { class: 'page-head' }, h('h1', {}, 'Usage'), controls(chosen)),
    chosen.by === 'team'
      ? h('p', { class: 'muted' }, 'By team: a request counts for each team of its user, and requests of users in no team are not shown.')
      : null,
    chartCard({ ...common, title: 'Tokens', metric: 'total_tokens', format: fmt.int }),
    chartCard({ ...common, title: 'Requests', metric: 'requests', format: fmt.int }),
    priced
      ? chartCard({ ...common, title: `Spend (${priced.currency || 'cost'})`, metric: 'cost', format: (n) => fmt.money(n), axisFormat: (n) => String(Number(n.toPrecision(3))) })
      : h('p', { class: 'muted' }, 'Spend is shown when prices are configured (usage.prices).'));
}

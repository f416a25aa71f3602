// Limits: what is configured per bucket, and who is closest to a budget.

import { call } from './api.js';
import { badge, card, fmt, h, replace, table } from './dom.js';
import { head } from './page.js';

function meter(fraction) {
  const bar = h('span', { class: 'meter-fill' });
  // Width through the CSSOM: allowed under style-src 'self', unlike a style attribute.
  bar.style.width = `${Math.min(100, Math.max(0, fraction * 100)).toFixed(1)}%`;
  const tone = fraction >= 1 ? 'bad' : fraction >= 0.8 ? 'warn' : 'ok';
  return h('span', { class: 'meter-wrap' }, h('span', { class: `meter ${tone}` }, bar), fmt.percent(fraction));
}

function show(value) {
  if (value === null || value === undefined) return '—';
  if (Array.isArray(value)) return value.map(show).join(', ');
  if (typeof value === 'object') return Object.entries(value).map(([k, v]) => `${k}: ${show(v)}`).join(' · ');
  if (typeof value === 'number') return Number.isInteger(value) ? fmt.int(value) : String(value);
  return String(value);
}

function columnsOf(rows) {
  const names = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  return names.map((name) => ({
    label: name.replaceAll('_', ' '),
    class: typeof rows[0][name] === 'number' ? 'num' : null,
    value: (row) => (name === 'fraction' && typeof row[name] === 'number' ? meter(row[name]) : show(row[name])),
  }));
}

function section(title, value) {
  if (Array.isArray(value)) {
    const rows = value.filter((r) => r && typeof r === 'object');
    return card(title, rows.length ? table(columnsOf(rows), rows) : h('p', { class: 'muted' }, 'None.'));
  }
  if (value && typeof value === 'object') {
    return card(title, table([
      { label: 'Setting', value: ([k]) => k },
      { label: 'Value', value: ([, v]) => show(v) },
    ], Object.entries(value), 'None.'));
  }
  return card(title, h('p', {}, show(value)));
}

export async function render(main, _params, current) {
  const answer = await call('GET', '/limits');
  if (!current()) return;
  const parts = Object.entries(answer).filter(([k]) => k !== 'object');
  replace(main, head('Limits'),
    parts.length ? parts.map(([name, value]) => section(name.replaceAll('_', ' '), value))
      : card(null, badge('No limits are configured.', 'muted')));
}

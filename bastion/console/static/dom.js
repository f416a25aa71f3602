// Building the page without ever parsing data as HTML: every string a user, a key or the
// server chose goes in through textContent or an attribute, so a user named
// <img src=x onerror=alert(1)> shows as those characters. No innerHTML anywhere.

const SVG_NS = 'http://www.w3.org/2000/svg';

function fill(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') el.setAttribute('class', value);
    else if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else if (name in el && !(el instanceof SVGElement) && typeof value !== 'string') el[name] = value;
    else el.setAttribute(name, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

/** Appends children: nodes as they are, strings and numbers as text, arrays flattened. */
export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element: h('button', {class: 'primary', onclick: f}, 'Save'). */
export function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

/** An SVG element, same calling convention as h(). */
export function s(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replaces an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

const INTEGER = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const COMPACT = new Intl.NumberFormat('en-US', { notation: 'compact', maximumFractionDigits: 1 });

export const fmt = {
  int: (n) => INTEGER.format(n || 0),
  compact: (n) => COMPACT.format(n || 0),
  money: (n, currency) => {
    const digits = Math.abs(n || 0) < 1 && n !== 0 ? 4 : 2;
    return `${(n || 0).toFixed(digits)}${currency ? ` ${currency}` : ''}`;
  },
  percent: (f) => `${Math.round((f || 0) * 100)}%`,
  /** A Unix time as "2026-12-05 07:30" in UTC (periods are UTC hours and days). */
  time: (t) => (t ? new Date(t * 1000).toISOString().slice(0, 16).replace('T', ' ') : '—'),
  day: (t) => new Date(t * 1000).toISOString().slice(0, 10),
  hour: (t) => new Date(t * 1000).toISOString().slice(5, 13).replace('T', ' ') + 'h',
  list: (items) => (items && items.length ? items.join(', ') : 'all'),
};

/** A Unix time for a table cell: the date and the time each kept whole ("—" for none). */
export function stamp(t) {
  if (!t) return '—';
  const text = fmt.time(t);
  return h('span', { class: 'stamp' }, h('span', {}, text.slice(0, 10)), ' ', h('span', {}, text.slice(11)));
}

/** A table: columns are {label, value: row => string|Node, class?}. */
export function table(columns, rows, empty = 'Nothing to show.') {
  const head = h('tr', {}, columns.map((c) => h('th', { class: c.class }, c.label)));
  const body = rows.map((row) =>
    h('tr', {}, columns.map((c) => h('td', { class: c.class }, c.value(row)))),
  );
  if (!rows.length) body.push(h('tr', {}, h('td', { class: 'empty', colspan: columns.length }, empty)));
  return h('div', { class: 'table-wrap' }, h('table', {}, h('thead', {}, head), h('tbody', {}, body)));
}

/** A coloured label: tone is ok, warn, bad or muted. */
export function badge(text, tone = 'muted') {
  return h('span', { class: `badge ${tone}` }, text);
}

/** A card with a title, and what goes in it. */
export function card(title, ...children) {
  return h('section', { class: 'card' }, title ? h('h2', {}, title) : null, children);
}

/** A labelled form field around an input. */
export function field(label, input, hint) {
  return h('label', { class: 'field' }, h('span', {}, label), input, hint ? h('small', {}, hint) : null);
}

/** A <select> of [value, label] pairs; `label` names it for screen readers when no <label> does. */
export function select(name, options, selected, label) {
  return h('select', { name, 'aria-label': label }, options.map(([value, text]) =>
    h('option', { value, selected: value === selected }, text)));
}

/** A line of text saying what went wrong (or right), as text. */
export function notice(message, tone = 'bad') {
  return h('p', { class: `notice ${tone}`, role: tone === 'bad' ? 'alert' : 'status' }, message);
}

/** Asks a yes/no question in a modal <dialog> (never window.confirm). Resolves true or false. */
export function confirmDialog(question, action = 'Confirm', tone = 'danger') {
  return new Promise((resolve) => {
    const dialog = h('dialog', { class: 'confirm' });
    const done = (answer) => { dialog.close(); dialog.remove(); resolve(answer); };
    append(dialog, [
      h('p', {}, question),
      h('div', { class: 'actions' },
        h('button', { type: 'button', onclick: () => done(false) }, 'Cancel'),
        h('button', { type: 'button', class: tone, onclick: () => done(true) }, action)),
    ]);
    dialog.addEventListener('cancel', () => done(false));
    document.body.append(dialog);
    dialog.showModal();
  });
}

// A cell starting with one of these is run as a formula by spreadsheets (CSV injection).
const FORMULA = /^[=+\-@\t\r]/;

function csvCell(value) {
  let text = value === undefined || value === null ? '' : String(value);
  if (typeof value === 'string' && FORMULA.test(text)) text = `'${text}`;
  return /[",\n\r]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

/** Downloads rows (arrays) as a CSV file, built in a Blob: nothing goes to the server. */
export function downloadCsv(filename, header, rows) {
  const text = [header, ...rows].map((row) => row.map(csvCell).join(',')).join('\r\n') + '\r\n';
  const url = URL.createObjectURL(new Blob([text], { type: 'text/csv' }));
  const link = h('a', { href: url, download: filename, class: 'hidden' });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** Reads a form's named controls as an object of trimmed strings. */
export function formValues(form) {
  const values = {};
  for (const [name, value] of new FormData(form)) values[name] = String(value).trim();
  return values;
}

/** "a, b ,c" -> ["a", "b", "c"]; empty -> undefined (the field was not given). */
export function splitList(text) {
  const items = (text || '').split(/[\s,]+/).filter(Boolean);
  return items.length ? items : undefined;
}

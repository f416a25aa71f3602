// Stacked bar charts drawn as SVG by hand: a few dozen lines instead of a charting library
// (nothing to vendor or audit, nothing that needs 'unsafe-inline' or eval under the CSP).
// Colours come from the stylesheet (classes series-0 .. series-9), not from style attributes.

import { append, h, s } from './dom.js';

const WIDTH = 800;
const HEIGHT = 260;
const MARGIN = { top: 14, right: 12, bottom: 30, left: 64 };
const COLOURS = 10;

/** A round step for about `count` gridlines up to `max`. */
function niceStep(max, count = 4) {
  const rough = max / count;
  const power = 10 ** Math.floor(Math.log10(rough));
  const scaled = rough / power;
  const nice = scaled <= 1 ? 1 : scaled <= 2 ? 2 : scaled <= 2.5 ? 2.5 : scaled <= 5 ? 5 : 10;
  return nice * power;
}

function axis(top, step, scale, format) {
  const lines = [];
  for (let value = 0; value <= top + step / 2; value += step) {
    const y = MARGIN.top + (1 - value / top) * scale;
    lines.push(
      s('line', { class: 'grid', x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y, y2: y }),
      s('text', { class: 'tick', x: MARGIN.left - 8, y: y + 4, 'text-anchor': 'end' }, format(value)),
    );
  }
  return lines;
}

function xLabels(buckets, labelOf, slot) {
  const every = Math.max(1, Math.ceil(buckets.length / 8));
  return buckets.map((bucket, i) =>
    i % every ? null : s('text', {
      class: 'tick', 'text-anchor': 'middle',
      x: MARGIN.left + slot * (i + 0.5), y: HEIGHT - MARGIN.bottom + 18,
    }, labelOf(bucket)),
  );
}

function bars(spec, top, scale, slot) {
  const { buckets, series, value, labelOf, format } = spec;
  const width = Math.max(1, slot * 0.72);
  const shapes = [];
  buckets.forEach((bucket, i) => {
    let base = 0;
    series.forEach((name, j) => {
      const amount = value(bucket, name);
      if (!amount) return;
      const height = (amount / top) * scale;
      const y = MARGIN.top + scale - ((base + amount) / top) * scale;
      base += amount;
      shapes.push(s('rect', {
        class: `bar series-${j % COLOURS}`, x: MARGIN.left + slot * i + (slot - width) / 2,
        y, width, height: Math.max(height, 0.5), 'data-series': name, 'data-value': amount,
      }, s('title', {}, `${labelOf(bucket)} · ${name}: ${format(amount)}`)));
    });
  });
  return shapes;
}

/**
 * A stacked bar chart with its legend.
 * spec: {buckets, series, value(bucket, series) -> number, labelOf(bucket), format(number), title,
 *        axisFormat(number) (default: format)}
 */
export function stackedBars(spec) {
  const totals = spec.buckets.map((b) => spec.series.reduce((sum, n) => sum + (spec.value(b, n) || 0), 0));
  const max = Math.max(0, ...totals);
  const step = max > 0 ? niceStep(max) : 1;
  const top = max > 0 ? Math.ceil(max / step) * step : 4;
  const scale = HEIGHT - MARGIN.top - MARGIN.bottom;
  const slot = (WIDTH - MARGIN.left - MARGIN.right) / Math.max(1, spec.buckets.length);
  const svg = s('svg', {
    class: 'chart', viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: 'img', 'aria-label': spec.title,
  });
  append(svg, [
    s('title', {}, spec.title),
    axis(top, step, scale, spec.axisFormat || spec.format),
    bars(spec, top, scale, slot),
    s('line', {
      class: 'axis', x1: MARGIN.left, x2: WIDTH - MARGIN.right,
      y1: MARGIN.top + scale, y2: MARGIN.top + scale,
    }),
    xLabels(spec.buckets, spec.labelOf, slot),
  ]);
  if (max === 0) {
    svg.append(s('text', { class: 'chart-empty', x: WIDTH / 2, y: HEIGHT / 2, 'text-anchor': 'middle' },
      'No usage in this range'));
  }
  const legend = h('ul', { class: 'legend' }, spec.series.map((name, j) =>
    h('li', {}, h('span', { class: `swatch series-${j % COLOURS}` }), name)));
  return h('figure', { class: 'chart-box' }, svg, legend);
}

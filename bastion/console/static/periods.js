// UTC periods, as the usage rollups count them, and the usage rows summed over them.

const HOUR = 3600;
const DAY = 86400;

export const now = () => Math.floor(Date.now() / 1000);

export function startOfDay(t = now()) {
  return t - (t % DAY);
}

export function startOfMonth(t = now()) {
  const date = new Date(t * 1000);
  return Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), 1) / 1000;
}

/** Every period start from `since` to now (so a chart shows the quiet hours too). */
export function buckets(period, since) {
  const step = period === 'hour' ? HOUR : DAY;
  const first = since - (since % step);
  const all = [];
  for (let t = first; t <= now(); t += step) all.push(t);
  return all;
}

export const SECONDS = { hour: HOUR, day: DAY };

/** Totals of usage rows: requests, errors, tokens, cost (and its currency, if priced). */
export function totals(rows) {
  const sum = { requests: 0, errors: 0, total_tokens: 0, prompt_tokens: 0, completion_tokens: 0, cost: 0, currency: null, priced: false };
  for (const row of rows) {
    for (const name of ['requests', 'errors', 'total_tokens', 'prompt_tokens', 'completion_tokens']) {
      sum[name] += row[name] || 0;
    }
    if (row.cost !== undefined) {
      sum.cost += row.cost;
      sum.currency = row.currency || sum.currency;
      sum.priced = true;
    }
  }
  return sum;
}

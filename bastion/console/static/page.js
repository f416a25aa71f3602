// What the pages that change things share: a heading with actions, a message line, and a way
// to run an admin call that shows the server's answer (or refusal) as text, then reloads.

import { h, notice, replace } from './dom.js';

/** A page heading with buttons or controls beside it. */
export function head(title, ...actions) {
  return h('header', { class: 'page-head' }, h('h1', {}, title), h('div', { class: 'head-actions' }, actions));
}

/**
 * A page whose content `build(act)` makes (its heading first). act(work, success) runs an
 * admin call, then rebuilds with `success` as a message, or shows the refusal and leaves the
 * page as it is.
 */
export function reloading(main, current, build) {
  const messages = h('div', { class: 'messages', id: 'messages' });
  async function draw(message, tone = 'ok') {
    const content = await build(act);
    if (!current()) return;
    replace(messages, message ? notice(message, tone) : null);
    const [heading, ...rest] = content;
    replace(main, heading, messages, rest);
  }
  async function act(work, success) {
    replace(messages);
    main.inert = true;  // one change at a time: a double click does not create two keys
    try {
      const result = await work();
      await draw(typeof success === 'function' ? success(result) : success);
      return result;
    } catch (exc) {
      replace(messages, notice(exc.message));
      messages.scrollIntoView({ block: 'nearest' });
      return undefined;
    } finally {
      main.inert = false;
    }
  }
  return draw;
}

/** A form that shows and hides under a button: toggle(label, form). */
export function toggle(label, form) {
  form.hidden = true;
  const button = h('button', { type: 'button', class: 'primary', onclick: () => { form.hidden = !form.hidden; } }, label);
  return [button, form];
}

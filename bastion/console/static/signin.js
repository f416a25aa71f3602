// The sign-in page: an API key exchanged for a session, or OIDC when the gateway has it.

import { oidcEnabled, signIn } from './api.js';
import { h, notice, replace } from './dom.js';

// What the OIDC callback's short error codes mean; anything else is shown as its code.
const OIDC_ERRORS = {
  denied: 'The identity provider did not sign you in.',
  state: 'The sign-in took too long or was started elsewhere. Please try again.',
  forbidden: 'Your account may not use the console.',
  invalid: 'The identity provider’s answer was refused.',
};

function refusal(exc) {
  if (exc.status === 401) return 'That key was not accepted.';
  if (exc.status === 403) return 'This key’s holder may not use the console (it needs the admin or console permission).';
  if (exc.status === 429) return 'Too many attempts. Please wait a moment and try again.';
  return exc.message;
}

/** The sign-in view; `done` is called once a session exists. */
export function view(params, done) {
  document.title = 'Sign in · Bastion';
  const message = h('div', { class: 'messages' });
  if (params.error) {
    message.append(notice(OIDC_ERRORS[params.error] || `Sign-in with OIDC failed (${params.error}).`));
  }
  const key = h('input', {
    id: 'key', name: 'key', type: 'password', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'bst_…', required: true,
  });
  const submit = h('button', { type: 'submit', class: 'primary wide' }, 'Sign in');
  const form = h('form', { class: 'signin-form', id: 'signin-form' },
    h('label', { class: 'field' }, h('span', {}, 'API key'), key), submit);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    submit.disabled = true;
    replace(message);
    try {
      await signIn(key.value.trim());
      key.value = '';
      done();
    } catch (exc) {
      replace(message, notice(refusal(exc)));
    } finally {
      submit.disabled = false;
    }
  });
  const oidc = h('div', { class: 'oidc' });
  oidcEnabled().then((enabled) => {
    if (enabled) {
      replace(oidc, h('div', { class: 'or' }, 'or'),
        h('a', { class: 'button wide', id: 'oidc-signin', href: '/ui/oidc/start' }, 'Sign in with OIDC'));
    }
  });
  return h('div', { class: 'signin' },
    h('div', { class: 'signin-card' },
      h('div', { class: 'brand big' }, h('img', { src: 'logo.svg', alt: '' }), 'Bastion'),
      h('p', { class: 'muted' }, 'Sign in to the console with an administrator’s or a viewer’s API key.'),
      message, form, oidc));
}

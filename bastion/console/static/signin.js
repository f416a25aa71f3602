// The sign-in page: an API key exchanged for a session, or OIDC when the gateway has it.

import { oidcEnabled, signIn } from './api.js';
import { h, notice, replace } from './dom.js';

// What the OIDC callback's short error codes mean (the server sends only these fixed words,
// never the provider's own text); an unknown one is shown as its code.
const AGAIN = 'Please sign in again.';
const OIDC_ERRORS = {
  provider_refused: 'The identity provider did not sign you in.',
  state_mismatch: `The sign-in was started in another window or took too long. ${AGAIN}`,
  state_unknown: `The sign-in was started in another window or took too long. ${AGAIN}`,
  nonce_mismatch: `The identity provider’s answer did not match this sign-in. ${AGAIN}`,
  wrong_audience: 'The identity provider’s token was made for another application.',
  token_refused: 'The identity provider’s token was refused.',
  no_id_token: 'The identity provider sent no identity token.',
  bad_request: `The identity provider’s answer was incomplete. ${AGAIN}`,
  forbidden: 'Your account may not use the console (it needs the admin or console permission).',
  rate_limited: 'Too many attempts. Please wait a moment and try again.',
  provider_unavailable: 'The identity provider cannot be reached. Please try again later.',
  failed: 'The sign-in with OIDC failed.',
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
    const known = Object.hasOwn(OIDC_ERRORS, params.error);
    message.append(notice(known ? OIDC_ERRORS[params.error] : `Sign-in with OIDC failed (${params.error}).`));
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
      h('div', { class: 'brand big' }, h('img', { src: '/ui/logo.svg', alt: '' }), 'Bastion'),
      h('p', { class: 'muted' }, 'Sign in to the console with an administrator’s or a viewer’s API key.'),
      message, form, oidc));
}

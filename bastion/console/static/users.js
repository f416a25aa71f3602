// Users and service accounts: create, change role, disable or enable, delete.

import { call, session } from './api.js';
import { badge, card, confirmDialog, field, fmt, formValues, h, select, stamp, table } from './dom.js';
import { head, reloading, toggle } from './page.js';

const KINDS = [['', 'Everyone'], ['user', 'People'], ['service', 'Service accounts']];

function createForm(roles, act) {
  const form = h('form', { class: 'card form-grid', id: 'user-form' },
    h('h2', {}, 'New user or service account'),
    field('Name', h('input', { name: 'name', required: true, maxlength: 128, autocomplete: 'off' }),
      'Letters, digits and . _ @ + -'),
    field('Kind', select('kind', [['user', 'Person'], ['service', 'Service account']], 'user')),
    field('Role', select('role', roles.map((r) => [r.name, r.name]), 'user')),
    field('Description', h('input', { name: 'description', maxlength: 500 })),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Create')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const v = formValues(form);
    act(() => call('users.create', v), (u) => `Created ${u.kind === 'service' ? 'service account' : 'user'} ${u.name}.`);
  });
  return form;
}

function roleCell(user, roles, act) {
  if (user.name === session().principal) return user.role;  // nobody changes their own role
  const picker = select('role', roles.map((r) => [r.name, r.name]), user.role, `Role of ${user.name}`);
  picker.addEventListener('change', () => act(
    () => call('users.update', { name: user.name, role: picker.value }),
    `${user.name} now has the role ${picker.value}.`));
  return picker;
}

function actions(user, act) {
  if (user.name === session().principal) return h('span', { class: 'muted' }, 'you');
  const disable = h('button', { type: 'button', class: 'small', onclick: () => act(
    () => call('users.update', { name: user.name, disabled: !user.disabled }),
    `${user.name} is ${user.disabled ? 'enabled' : 'disabled'}.`) }, user.disabled ? 'Enable' : 'Disable');
  const remove = h('button', { type: 'button', class: 'small danger', onclick: async () => {
    if (await confirmDialog(`Delete ${user.name} and all of their keys?`, 'Delete')) {
      act(() => call('users.delete', { name: user.name }), `Deleted ${user.name}.`);
    }
  } }, 'Delete');
  return h('div', { class: 'row-actions' }, disable, remove);
}

function kindFilter(kind) {
  return h('div', { class: 'segmented' }, KINDS.map(([value, label]) =>
    h('a', { href: value ? `#users?kind=${value}` : '#users', class: value === kind ? 'active' : null }, label)));
}

export async function render(main, params, current) {
  const kind = KINDS.some(([v]) => v === params.kind) ? params.kind : '';
  const draw = reloading(main, current, async (act) => {
    const [users, roles] = await Promise.all([call('users.list'), call('roles.list')]);
    const shown = users.data.filter((u) => !kind || u.kind === kind);
    const [button, form] = toggle('New user', createForm(roles.data, act));
    return [
      head('Users', button),
      form,
      card(null, kindFilter(kind), table([
        { label: 'Name', value: (u) => h('span', { class: 'strong', 'data-user': u.name }, u.name) },
        { label: 'Kind', value: (u) => badge(u.kind === 'service' ? 'service' : 'person', u.kind === 'service' ? 'info' : 'muted') },
        { label: 'Role', value: (u) => roleCell(u, roles.data, act) },
        { label: 'Teams', value: (u) => fmt.list(u.teams).replace(/^all$/, '—') },
        { label: 'State', value: (u) => badge(u.disabled ? 'disabled' : 'active', u.disabled ? 'bad' : 'ok') },
        { label: 'Description', value: (u) => u.description },
        { label: 'Created', value: (u) => stamp(u.created_at) },
        { label: '', value: (u) => actions(u, act) },
      ], shown, 'No users yet.')),
    ];
  });
  await draw();
}

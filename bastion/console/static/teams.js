// Teams: create, delete, add and remove members.

import { call } from './api.js';
import { card, confirmDialog, field, fmt, formValues, h, select } from './dom.js';
import { head, reloading, toggle } from './page.js';

function createForm(act) {
  const form = h('form', { class: 'card form-grid', id: 'team-form' },
    h('h2', {}, 'New team'),
    field('Name', h('input', { name: 'name', required: true, maxlength: 128, autocomplete: 'off' })),
    field('Description', h('input', { name: 'description', maxlength: 500 })),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Create')));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    act(() => call('teams.create', formValues(form)), (t) => `Created team ${t.name}.`);
  });
  return form;
}

function member(team, name, act) {
  return h('li', { class: 'chip' }, name,
    h('button', { type: 'button', class: 'chip-x', 'aria-label': `Remove ${name} from ${team.name}`, onclick: () => act(
      () => call('teams.remove', { team: team.name, user: name }), `Removed ${name} from ${team.name}.`) }, '×'));
}

function addMember(team, users, act) {
  const others = users.filter((u) => !team.members.includes(u.name));
  if (!others.length) return null;
  const picker = select('user', others.map((u) => [u.name, u.name]), others[0].name, `User to add to ${team.name}`);
  const form = h('form', { class: 'inline' }, picker, h('button', { type: 'submit', class: 'small' }, 'Add member'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    act(() => call('teams.add', { team: team.name, user: picker.value }), `Added ${picker.value} to ${team.name}.`);
  });
  return form;
}

function teamCard(team, users, act) {
  const remove = h('button', { type: 'button', class: 'small danger', onclick: async () => {
    if (await confirmDialog(`Delete the team ${team.name}? Its members stay.`, 'Delete')) {
      act(() => call('teams.delete', { name: team.name }), `Deleted team ${team.name}.`);
    }
  } }, 'Delete team');
  return h('section', { class: 'card team', 'data-team': team.name },
    h('div', { class: 'card-head' }, h('h2', {}, team.name), remove),
    team.description ? h('p', { class: 'muted' }, team.description) : null,
    h('ul', { class: 'chips' }, team.members.length ? team.members.map((m) => member(team, m, act)) : h('li', { class: 'muted' }, 'No members yet.')),
    addMember(team, users, act),
    h('p', { class: 'muted small' }, `Created ${fmt.time(team.created_at)} by ${team.created_by}`));
}

export async function render(main, _params, current) {
  const draw = reloading(main, current, async (act) => {
    const [teams, users] = await Promise.all([call('teams.list'), call('users.list')]);
    const [button, form] = toggle('New team', createForm(act));
    return [
      head('Teams', button),
      form,
      teams.data.length
        ? h('div', { class: 'cards' }, teams.data.map((t) => teamCard(t, users.data, act)))
        : card(null, h('p', { class: 'muted' }, 'No teams yet.')),
    ];
  });
  await draw();
}

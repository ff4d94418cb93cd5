// The demo app: a chat room and a live map of one loc zone, on clients/js.
// Everything a message or a name holds is put on the page as text, never as
// HTML, and the page's Content-Security-Policy allows scripts from here only.
import { connect } from '/switchboard.js';

const $ = (id) => document.getElementById(id);
const W = 720;
const H = 440;

const state = {
  client: null,
  room: 'lobby',
  zone: 'plaza',
  name: '',
  me: { x: W / 2, y: H / 2 },
  people: new Map(), // user -> {name, x, y, tx, ty, seen}
  names: new Map(), // user -> display name
  pendingMove: null,
  moveTimer: null,
  caughtUp: 0,
};

function randomKey() {
  if (globalThis.crypto && crypto.randomUUID) return crypto.randomUUID();
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
}

function hue(user) {
  let h = 0;
  for (const c of user) h = (h * 31 + c.codePointAt(0)) % 360;
  return h;
}

function displayName(user) {
  return state.names.get(user) || user;
}

// ---- status -------------------------------------------------------------

function setStatus(s) {
  const pill = $('status');
  const text = { open: 'live', connecting: 'connecting…', reconnecting: 'reconnecting…', closed: 'offline' }[s] || s;
  pill.textContent = text;
  pill.className = `pill ${s === 'open' ? 'pill-live' : s === 'closed' ? 'pill-off' : 'pill-wait'}`;
}

// ---- chat ------------------------------------------------------------------

function timeOf(ts) {
  const d = new Date(ts);
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function systemLine(text) {
  const li = document.createElement('li');
  li.className = 'system';
  li.textContent = text;
  $('messages').append(li);
  li.scrollIntoView({ block: 'end' });
}

function showMessage(m, info) {
  const list = $('messages');
  if (list.querySelector(`li[data-seq="${m.seq}"]`)) return;
  const li = document.createElement('li');
  li.dataset.seq = String(m.seq);
  li.dataset.user = m.user;
  if (m.user === state.client.user) li.classList.add('mine');
  if (info.caughtUp) {
    li.classList.add('caught-up');
    li.title = 'sent while you were disconnected';
    state.caughtUp += 1;
  }
  const author = document.createElement('span');
  author.className = 'author';
  author.style.color = `hsl(${hue(m.user)} 70% 68%)`;
  author.textContent = displayName(m.user);
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = m.text;
  const time = document.createElement('time');
  time.dateTime = new Date(m.ts).toISOString();
  time.textContent = timeOf(m.ts);
  li.append(author, text, time);
  // In seq order, whatever order they arrive in.
  const after = [...list.querySelectorAll('li[data-seq]')].find((x) => Number(x.dataset.seq) > m.seq);
  if (after) list.insertBefore(li, after); else list.append(li);
  li.scrollIntoView({ block: 'end' });
}

function learnName(user, name) {
  if (!name || state.names.get(user) === name) return;
  state.names.set(user, name);
  for (const el of document.querySelectorAll(`#messages li[data-user="${CSS.escape(user)}"] .author`)) el.textContent = name;
}

async function say(text) {
  const input = $('say');
  input.value = '';
  try {
    // An idempotency key makes the retry after a dropped connection safe.
    await state.client.request('chat', 'say', { room: state.room, text, idempotency_key: randomKey() }, { retry: true, timeout: 20_000 });
  } catch (e) {
    systemLine(`not sent (${e.code}): ${text}`);
    input.value = text;
  }
}

// ---- map -----------------------------------------------------------------------

function upsert(user, name, x, y) {
  if (name) learnName(user, name);
  let p = state.people.get(user);
  if (!p) {
    p = { x, y, tx: x, ty: y };
    state.people.set(user, p);
  }
  p.tx = x;
  p.ty = y;
  p.seen = Date.now();
  renderPeople();
}

function renderPeople() {
  const ul = $('people');
  const users = [...state.people.keys()].sort((a, b) => displayName(a).localeCompare(displayName(b)));
  ul.replaceChildren(...users.map((user) => {
    const p = state.people.get(user);
    const li = document.createElement('li');
    li.dataset.user = user;
    li.dataset.name = displayName(user);
    li.dataset.x = String(Math.round(p.tx));
    li.dataset.y = String(Math.round(p.ty));
    const dot = document.createElement('span');
    dot.className = 'dot';
    dot.style.background = `hsl(${hue(user)} 70% 60%)`;
    const name = document.createElement('span');
    name.textContent = displayName(user) + (user === state.client.user ? ' (you)' : '');
    const pos = document.createElement('span');
    pos.className = 'pos';
    pos.textContent = `${Math.round(p.tx)}, ${Math.round(p.ty)}`;
    li.append(dot, name, pos);
    return li;
  }));
}

function moveTo(x, y) {
  state.me.x = Math.max(8, Math.min(W - 8, x));
  state.me.y = Math.max(8, Math.min(H - 8, y));
  if (state.client.user) upsert(state.client.user, state.name, state.me.x, state.me.y);
  state.pendingMove = { x: state.me.x, y: state.me.y };
  if (state.moveTimer) return;
  // At most 20 moves a second: the gateway's rate limit is for people, not mice.
  state.moveTimer = setTimeout(sendMove, 50);
}

async function sendMove() {
  state.moveTimer = null;
  const m = state.pendingMove;
  if (!m) return;
  state.pendingMove = null;
  try {
    await state.client.request('loc', 'move', { zone: state.zone, x: Math.round(m.x * 10) / 10, y: Math.round(m.y * 10) / 10, name: state.name });
  } catch { /* the next move goes again */ }
}

/** The zone as loc has it now: after a reconnect, whoever left meanwhile goes. */
async function loadZone() {
  try {
    // `zone` answers a page at a time (500 users); `more` says another follows.
    const users = [];
    let after;
    for (;;) {
      const z = await state.client.request('loc', 'zone', after === undefined ? { zone: state.zone } : { zone: state.zone, after });
      users.push(...(z.users || []));
      if (!z.more || !z.users || z.users.length === 0) break;
      after = z.users[z.users.length - 1].user;
    }
    const here = new Set(users.map((u) => u.user));
    for (const user of [...state.people.keys()]) if (!here.has(user)) state.people.delete(user);
    for (const u of users) upsert(u.user, u.name, u.x, u.y);
    renderPeople();
  } catch { /* shown on the next event */ }
}

function draw() {
  const canvas = $('map');
  const g = canvas.getContext('2d');
  g.clearRect(0, 0, W, H);
  g.strokeStyle = 'rgba(138, 147, 169, 0.10)';
  g.lineWidth = 1;
  for (let x = 40; x < W; x += 40) { g.beginPath(); g.moveTo(x, 0); g.lineTo(x, H); g.stroke(); }
  for (let y = 40; y < H; y += 40) { g.beginPath(); g.moveTo(0, y); g.lineTo(W, y); g.stroke(); }
  for (const [user, p] of state.people) {
    p.x += (p.tx - p.x) * 0.25;
    p.y += (p.ty - p.y) * 0.25;
    const mine = user === state.client.user;
    const color = `hsl(${hue(user)} 70% 60%)`;
    g.beginPath();
    g.arc(p.x, p.y, mine ? 9 : 7, 0, Math.PI * 2);
    g.fillStyle = color;
    g.shadowColor = color;
    g.shadowBlur = 12;
    g.fill();
    g.shadowBlur = 0;
    if (mine) { g.lineWidth = 2; g.strokeStyle = '#fff'; g.stroke(); }
    g.font = '600 12px system-ui, sans-serif';
    g.fillStyle = '#e6e9f2';
    g.textAlign = 'center';
    g.fillText(displayName(user) + (mine ? ' (you)' : ''), p.x, p.y - 14);
  }
  requestAnimationFrame(draw);
}

// ---- start ---------------------------------------------------------------------

async function enter(event) {
  event.preventDefault();
  const button = $('enter-button');
  const error = $('enter-error');
  error.textContent = '';
  state.name = $('name').value.trim().slice(0, 32);
  state.room = $('room').value.trim() || 'lobby';
  state.zone = $('zone').value.trim() || 'plaza';
  const token = $('token').value.trim();
  if (!state.name) return;
  if (!$('token-box').hidden && !token) {
    error.textContent = 'This gateway needs a token: mint one with sbctl token and paste it.';
    return;
  }
  button.disabled = true;
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const client = connect(`${scheme}://${location.host}/ws`, token ? { token } : {});
  state.client = client;
  client.on('state', setStatus);
  setStatus(client.state);
  const ready = await Promise.race([client.ready().then(() => true), new Promise((r) => setTimeout(() => r(false), 5000))]);
  if (!ready) {
    client.close();
    button.disabled = false;
    error.textContent = token ? 'Could not connect: is the token for this gateway, and not expired?' : 'Could not connect to the gateway.';
    return;
  }
  $('enter').hidden = true;
  $('app').hidden = false;
  $('room-name').textContent = state.room;
  $('zone-name').textContent = state.zone;
  $('me').textContent = `${state.name} · ${client.user}`;
  $('conn-info').textContent = `connected to ${location.host}`;

  client.on('open', async ({ reconnected }) => {
    if (!reconnected) return;
    state.caughtUp = 0;
    await loadZone();
    moveTo(state.me.x, state.me.y);
    $('me').textContent = `${state.name} · ${client.user}`;
    setTimeout(() => systemLine(`reconnected${state.caughtUp ? ` — caught up on ${state.caughtUp} message${state.caughtUp === 1 ? '' : 's'}` : ''}`), 300);
  });
  let wasOpen = true;
  client.on('state', (s) => {
    if (s === 'reconnecting' && wasOpen) systemLine('connection lost — reconnecting…');
    wasOpen = s === 'open';
  });
  client.on('gap', ({ from, to }) => systemLine(`too much was missed to show (messages ${from}–${to})`));

  await client.subscribe(`loc.${state.zone}`, (e) => {
    if (e.left) {
      state.people.delete(e.user);
      renderPeople();
    } else {
      upsert(e.user, e.name, e.x, e.y);
    }
  });
  await loadZone();
  moveTo(120 + Math.random() * (W - 240), 80 + Math.random() * (H - 160));
  const room = await client.joinRoom(state.room, showMessage, { history: 50 });
  $('members').textContent = `${room.members.length} here`;
  $('say').focus();
}

function keys(e) {
  if (!state.client || $('app').hidden) return;
  if (e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement) return;
  const step = e.shiftKey ? 40 : 12;
  const d = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] }[e.key];
  if (!d) return;
  e.preventDefault();
  moveTo(state.me.x + d[0], state.me.y + d[1]);
}

async function main() {
  try {
    const config = await (await fetch('/demo.json', { cache: 'no-store' })).json();
    $('token-box').hidden = !config.auth;
  } catch { /* served elsewhere: assume no auth */ }
  $('name').addEventListener('input', () => {
    $('token-cmd').textContent = `sbctl token --sub ${$('name').value.trim().replace(/[^A-Za-z0-9_\-@:+=|]/g, '') || 'ada'}`;
  });
  $('enter-form').addEventListener('submit', enter);
  $('say-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = $('say').value.trim();
    if (text) say(text);
  });
  const canvas = $('map');
  canvas.addEventListener('mousemove', (e) => {
    const r = canvas.getBoundingClientRect();
    moveTo(((e.clientX - r.left) / r.width) * W, ((e.clientY - r.top) / r.height) * H);
  });
  document.addEventListener('keydown', keys);
  requestAnimationFrame(draw);
}

main();

// `chat` in Node: the Rust chat's ops (crates/chat) on @switchboard/bus, so it
// can stand in for it beside the Rust db, loc and gateway. Run by main:
//
//   [[apps]]
//   name = "chat"
//   script = "clients/node/examples/chat.js"
//   depends_on = ["db"]
//
// Options in the environment: CHAT_SLOW_OP_MS (an op `slow` that takes that
// long, for fault drills).

const { service, BusError } = require('@switchboard/bus');

const MAX_TEXT = 1000;
const HISTORY_DEFAULT = 50;
const HISTORY_MAX = 200;
const TOKEN = /^[A-Za-z0-9_-]{1,64}$/;

// room -> user -> Set of sessions (a user with two connections stays until both leave).
const rooms = new Map();

function room(data) {
  if (!data || typeof data.room !== 'string' || !TOKEN.test(data.room)) throw BusError.badRequest('room: 1-64 of A-Z a-z 0-9 _ -');
  return data.room;
}

function text(data) {
  const t = data && data.text;
  if (typeof t !== 'string' || t.trim() === '') throw BusError.badRequest('text is empty');
  if ([...t].length > MAX_TEXT) throw BusError.badRequest(`text longer than ${MAX_TEXT} characters`);
  // Shown to other users: no control characters but new line and tab, no bidi overrides.
  if (/[\u0000-\u0008\u000b-\u001f\u007f\u202a-\u202e\u2066-\u2069]/.test(t)) throw BusError.badRequest('text: control characters');
  return t;
}

function user(ctx) {
  if (!ctx.user) throw BusError.unauthorized('no user');
  return ctx.user;
}

const members = (r) => [...(rooms.get(r) || new Map()).keys()].sort();

function leave(r, u, session) {
  const m = rooms.get(r);
  if (!m) return;
  const sessions = m.get(u);
  if (sessions) {
    sessions.delete(session);
    if (sessions.size === 0) m.delete(u);
  }
  if (m.size === 0) rooms.delete(r);
}

function closeWhere(pred) {
  for (const [r, m] of rooms) {
    for (const [u, sessions] of m) {
      for (const s of sessions) if (pred(u, s)) sessions.delete(s);
      if (sessions.size === 0) m.delete(u);
    }
    if (m.size === 0) rooms.delete(r);
  }
}

const chat = service({ name: 'chat', version: '1.0.0-node' });

chat.handle('join', (data, ctx) => {
  const r = room(data);
  const u = user(ctx);
  if (!rooms.has(r)) rooms.set(r, new Map());
  const m = rooms.get(r);
  if (!m.has(u)) m.set(u, new Set());
  m.get(u).add(ctx.session || 'direct');
  // A typed grant: the gateway subscribes this client to the room.
  ctx.grant(`chat.room.${r}`);
  return { room: r, members: members(r) };
});

chat.handle('leave', (data, ctx) => {
  const r = room(data);
  leave(r, user(ctx), ctx.session || 'direct');
  ctx.revoke(`chat.room.${r}`);
  return { room: r, members: members(r) };
});

chat.handle('who', (data) => ({ users: members(room(data)) }));

chat.handle('say', async (data, ctx) => {
  const r = room(data);
  const t = text(data);
  const u = user(ctx);
  const ts = Date.now();
  // Acknowledged only once db committed it; idempotent under our own key, so
  // a retry below us stores it once.
  const key = data.idempotency_key || `~${ctx.trace || ts}${Math.random().toString(16).slice(2, 10)}`;
  const saved = await ctx.call('db', 'chat.save', { room: r, user: u, text: t, ts, idempotency_key: key }, { idem: true });
  if (saved.duplicate && data.idempotency_key) return { seq: saved.seq, duplicate: true };
  ctx.publish(`chat.room.${r}`, { room: r, seq: saved.seq, user: u, text: t, ts });
  return { seq: saved.seq };
});

chat.handle('history', async (data, ctx) => {
  const r = room(data);
  if (data.before !== undefined && data.after !== undefined) throw BusError.badRequest('history takes `before` or `after`, not both');
  const limit = Math.min(Math.max(Number(data.limit) || HISTORY_DEFAULT, 1), HISTORY_MAX);
  return ctx.call('db', 'chat.history', { room: r, limit, before: data.before, after: data.after });
});

chat.handle('dm', (data, ctx) => {
  const t = text(data);
  if (typeof data.user !== 'string' || !TOKEN.test(data.user)) throw BusError.badRequest('user');
  ctx.publish(`user.${data.user}`, { from: user(ctx), text: t, ts: Date.now() });
  return {};
});

const slowMs = Number(process.env.CHAT_SLOW_OP_MS || 0);
if (slowMs > 0) chat.handle('slow', () => new Promise((r) => setTimeout(() => r({ slept: slowMs }), slowMs)));

chat.start().then(async () => {
  // Presence ends with the client's connection, or with its whole gateway.
  await chat.subscribe('session.close', (s) => closeWhere((u, session) => u === s.user && session === s.session));
  await chat.subscribe('bus.peer_lost', (lost) => closeWhere((_, session) => session.replace(/-[0-9]+$/, '') === lost.instance));
});

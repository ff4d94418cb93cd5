// The client against a real system: broker, db on MariaDB, chat, loc and two
// gateways under main, started by tests/e2e/client_js.rs, which passes:
//   SB_WS_A    ws://… of gateway A (no auth), app name SB_GW_A
//   SB_WS_B    ws://… of gateway B (auth, leeway 0), app name SB_GW_B
//   SB_SBCTL   the sbctl binary; SB_BROKER the bus (to stop and start gateways)
//   SB_AUTH_SECRET  gateway B's secret (tokens are minted with `sbctl token`)
// Run alone (`npm test` without them) these tests say why they are skipped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, SwitchboardError } from '../switchboard.js';

const env = process.env;
const live = env.SB_WS_A && env.SB_WS_B && env.SB_SBCTL;
const skip = live ? false : 'needs a running system: run through tests/e2e/client_js.rs (scripts/test.sh)';

function sbctl(...args) {
  return execFileSync(env.SB_SBCTL, args, { env, encoding: 'utf8', timeout: 30_000 }).trim();
}

function mint(sub, exp = '1h') {
  return sbctl('token', '--sub', sub, '--exp', exp);
}

async function until(what, check, ms = 15_000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await check()) return;
    await sleep(25);
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** Events on a topic, collected. */
function collect(client, topic) {
  const got = [];
  const ready = client.subscribe(topic, (data) => got.push(data));
  return { got, ready };
}

test('requests resolve with data and fail with typed errors', { skip, timeout: 60_000 }, async () => {
  const c = connect(env.SB_WS_A);
  await c.ready();
  assert.match(c.user, /^anon-/, 'an anonymous user, learned from whoami');
  const data = { text: 'ünï 🚀', n: [1, -2, 3.5], nested: { ok: true, none: null } };
  assert.deepEqual(await c.request('chat', '$echo', data), data);
  const cases = [
    [['nope', 'x'], 'unknown_service'],
    [['chat', 'no_such_op'], 'unknown_op'],
    [['db', 'chat.save'], 'forbidden'],
    [['chat', 'say', { room: 'r' }], 'bad_request'],
  ];
  for (const [[to, op, d], code] of cases) {
    await assert.rejects(c.request(to, op, d ?? {}), (e) => e instanceof SwitchboardError && e.code === code, `${to}.${op}`);
  }
  const pong = await c.request(null, 'ping');
  assert.deepEqual(pong, {});
  c.close();
  await assert.rejects(c.request('chat', '$echo', {}), (e) => e.code === 'disconnected');
});

test('MessagePack mode: binary frames both ways, events too', { skip, timeout: 60_000 }, async () => {
  const c = connect(env.SB_WS_A, { binary: true });
  const data = { text: 'binär ✓', big: 2 ** 40, neg: -129, f: 0.25, list: [null, true, 'x'.repeat(300)] };
  assert.deepEqual(await c.request('chat', '$echo', data), data);
  const events = collect(c, 'loc.mp-zone');
  await events.ready;
  await c.request('loc', 'move', { zone: 'mp-zone', x: 1.5, y: -2 });
  await until('the move event', () => events.got.length === 1);
  assert.equal(events.got[0].x, 1.5);
  assert.equal(events.got[0].user, c.user);
  c.close();
});

test('unsubscribe stops the events; one handler of two keeps the subscription', { skip, timeout: 60_000 }, async () => {
  const c = connect(env.SB_WS_A);
  const mover = connect(env.SB_WS_A);
  const zone = `us${Date.now() % 100000}`;
  const first = [];
  const second = [];
  const one = (e) => first.push(e);
  await c.subscribe(`loc.${zone}`, one);
  await c.subscribe(`loc.${zone}`, (e) => second.push(e));
  await mover.request('loc', 'move', { zone, x: 1, y: 1 });
  await until('both handlers', () => first.length === 1 && second.length === 1);
  await c.unsubscribe(`loc.${zone}`, one);
  await mover.request('loc', 'move', { zone, x: 2, y: 2 });
  await until('the remaining handler', () => second.length === 2);
  assert.equal(first.length, 1, 'the removed handler gets nothing more');
  await c.unsubscribe(`loc.${zone}`);
  await mover.request('loc', 'move', { zone, x: 3, y: 3 });
  await c.request(null, 'ping'); // the gateway has sent whatever it was going to
  await sleep(200);
  assert.equal(second.length, 2, 'unsubscribed: no more events');
  c.close();
  mover.close();
});

test('a say on gateway B reaches a room member on gateway A; events from the join grant', { skip, timeout: 60_000 }, async () => {
  const a = connect(env.SB_WS_A);
  const b = connect(env.SB_WS_B, { getToken: () => mint('bea') });
  const room = `cross-${Date.now()}`;
  const seen = [];
  const granted = [];
  a.on('event', (e) => { if (e.topic === `chat.room.${room}`) granted.push(e.data); });
  await a.joinRoom(room, (m) => seen.push(m));
  await b.ready();
  assert.equal(b.user, 'bea', 'the token minted by sbctl is the user');
  const { seq } = await b.request('chat', 'say', { room, text: 'from B' });
  await until('the message on A', () => seen.length === 1);
  assert.deepEqual([seen[0].seq, seen[0].user, seen[0].text], [seq, 'bea', 'from B']);
  assert.equal(granted.length, 1, 'the event came by the grant of chat join, not a subscribe');
  a.close();
  b.close();
});

test('across a gateway restart: queued requests, resubscription, the gap filled once, in order', { skip, timeout: 60_000 }, async () => {
  const room = `gap-${Date.now()}`;
  const zone = `gz${Date.now() % 100000}`;
  const a = connect(env.SB_WS_A, { backoff: { initial: 100, max: 400 } });
  const b = connect(env.SB_WS_B, { getToken: () => mint('bob') });
  const states = [];
  a.on('state', (s) => states.push(s));
  const messages = [];
  await b.request('chat', 'say', { room, text: 'before anyone' });
  const joined = await a.joinRoom(room, (m, info) => messages.push({ ...m, info }), { history: 10 });
  assert.deepEqual(messages.map((m) => [m.text, !!m.info.replayed]), [['before anyone', true]]);
  const moves = collect(a, `loc.${zone}`);
  await moves.ready;
  await b.request('chat', 'say', { room, text: 'live 1' });
  await until('live 1', () => messages.length === 2);

  // Gateway A goes away; what is said meanwhile is missed by A.
  sbctl('stop', env.SB_GW_A);
  await until('A to notice', () => a.state === 'reconnecting');
  const queued = a.request('chat', '$echo', { queued: true }, { timeout: 30_000 });
  const tooShort = a.request('chat', '$echo', {}, { timeout: 200 });
  await assert.rejects(tooShort, (e) => e.code === 'timeout' && /not connected/.test(e.detail));
  const missed = [];
  for (const text of ['missed 1', 'missed 2', 'missed 3']) {
    missed.push((await b.request('chat', 'say', { room, text })).seq);
  }
  assert.equal(messages.length, 2, 'nothing arrives while A is down');

  sbctl('start', env.SB_GW_A);
  assert.deepEqual(await queued, { queued: true }, 'the request made while disconnected is answered');
  await until('the catch-up', () => messages.length === 5);
  assert.deepEqual(messages.slice(2).map((m) => [m.seq, m.text, !!m.info.caughtUp]),
    missed.map((seq, i) => [seq, `missed ${i + 1}`, true]));
  assert.ok(states.includes('reconnecting') && a.state === 'open', states.join(','));
  assert.equal(a.connections, 2);
  assert.ok(joined.lastSeq >= missed[2]);

  // Live again, exactly once, after the gap; and the loc subscription is back.
  const { seq: after } = await b.request('chat', 'say', { room, text: 'live 2' });
  await until('live 2', () => messages.length === 6);
  assert.equal(messages[5].seq, after);
  const seqs = messages.map((m) => m.seq);
  assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), 'in seq order');
  assert.equal(new Set(seqs).size, seqs.length, 'no duplicates');
  await b.request('loc', 'move', { zone, x: 3, y: 4 });
  await until('the move after resubscribing', () => moves.got.length === 1);
  assert.equal(moves.got[0].user, 'bob');
  await sleep(300);
  assert.equal(messages.length, 6, 'nothing delivered twice');
  a.close();
  b.close();
});

test('a short-lived token is refreshed with getToken before it ends', { skip, timeout: 60_000 }, async () => {
  let minted = 0;
  const c = connect(env.SB_WS_B, {
    getToken: () => { minted += 1; return mint('ren', '3s'); },
    refreshBefore: 2,
  });
  await c.ready();
  const first = c.expires;
  assert.ok(first, 'whoami tells when the token ends');
  await sleep(4_500);
  // Gateway B has no leeway: without the refresh it would have closed (4002).
  assert.equal(c.connections, 1, 'the same connection');
  assert.ok(minted >= 2, `refreshed (${minted} tokens)`);
  assert.ok(c.expires > first);
  assert.deepEqual(await c.request('chat', '$echo', { still: 'here' }), { still: 'here' });
  c.close();
});

test('without getToken, a token past its end closes the connection (4002) and the client says so', { skip, timeout: 60_000 }, async () => {
  const closes = [];
  const c = connect(env.SB_WS_B, { token: mint('old', '1s'), backoff: { initial: 60_000, max: 60_000 } });
  c.on('close', (e) => closes.push(e.code));
  await c.ready();
  await until('the expiry close', () => closes.length > 0, 5_000);
  assert.equal(closes[0], 4002);
  assert.equal(c.state, 'reconnecting');
  c.close();
});

test('a failing getToken is seen: the first state, an error event, then reconnecting', async () => {
  const states = [];
  const errors = [];
  const c = connect('ws://127.0.0.1:9/ws', {
    getToken: () => Promise.reject(new Error('no /token here')),
    backoff: { initial: 50, max: 100 },
  });
  c.on('state', (s) => states.push(s));
  c.on('error', (e) => errors.push(e.message));
  await until('an error', () => errors.length > 0);
  assert.match(errors[0], /getToken failed: no \/token here/);
  assert.equal(states[0], 'connecting', 'the state it started in is reported');
  await until('reconnecting', () => states.includes('reconnecting'));
  c.close();
});

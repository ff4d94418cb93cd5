'use strict';
// @switchboard/bus against a real broker (target/debug/broker).

const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const path = require('node:path');
const { service, connect, BusError, reply } = require('..');
const { startBroker, eventually, SECRET, quiet } = require('./helpers');

let n = 0;
const name = (p) => `${p}-${process.pid}-${++n}`;

async function pair(broker, setup, opts = {}) {
  const svc = service({ name: 'greet', instance: name('greet'), broker: broker.endpoint, secret: SECRET, exit: false, log: quiet, ...opts });
  setup(svc);
  await svc.start({ signals: false });
  const client = await connect({ broker: broker.endpoint, secret: SECRET, instance: name('cli'), log: quiet });
  return { svc, client };
}

test('a service registers with the secret, serves, and its errors are typed', async (t) => {
  const broker = await startBroker();
  t.after(() => broker.stop());
  const { svc, client } = await pair(broker, (s) => {
    s.handle('hello', (data, ctx) => ({ hi: data.name, user: ctx.user ?? null, trace: ctx.trace, deadline: ctx.deadline }));
    s.handle('refuse', () => { throw BusError.forbidden('not you'); });
    s.handle('bug', () => { throw new Error('secret detail'); });
  });
  t.after(async () => { await client.close(); await svc.stop(); });
  const deadline = Date.now() + 3000;
  const out = await client.call('greet', 'hello', { name: 'ada' }, { user: 'ada', trace: 'feedfacefeedface', deadline });
  assert.deepEqual(out, { hi: 'ada', user: 'ada', trace: 'feedfacefeedface', deadline });
  await assert.rejects(client.call('greet', 'refuse', {}), { code: 'forbidden', message: 'not you' });
  await assert.rejects(client.call('greet', 'bug', {}), (e) => e.code === 'internal' && !e.message.includes('secret detail'));
  await assert.rejects(client.call('greet', 'nope', {}), { code: 'unknown_op' });
  await assert.rejects(client.call('nobody', 'x', {}), { code: 'unknown_service' });
  const echoed = await client.call('greet', '$echo', new Uint8Array([1, 2, 3]), { raw: true });
  assert.deepEqual([...echoed], [1, 2, 3]);
});

test('a broker that does not prove the secret never gets the peer', async (t) => {
  // --insecure: it accepts at once, without knowing the secret.
  const broker = await startBroker({ args: ['--insecure'] });
  t.after(() => broker.stop());
  const svc = service({ name: 'greet', instance: name('greet'), broker: broker.endpoint, secret: SECRET, exit: false, log: quiet });
  const started = svc.start({ signals: false }).then(() => 'registered');
  const outcome = await Promise.race([started, new Promise((r) => setTimeout(() => r('refused'), 1500))]);
  assert.equal(outcome, 'refused');
  await svc.bus.close();
});

test('$health, $info, $metrics and $trace answer as the spec says', async (t) => {
  const broker = await startBroker();
  t.after(() => broker.stop());
  const { svc, client } = await pair(broker, (s) => {
    s.handle('hello', async (data, ctx) => {
      await ctx.call('greet', '$echo', {});
      return { ok: true };
    });
  }, { version: '2.0.0' });
  t.after(async () => { await client.close(); await svc.stop(); });
  await client.call('greet', 'hello', {}, { trace: 'aaaabbbbccccdddd' });
  const health = await client.call('greet', '$health');
  assert.equal(health.service, 'greet');
  assert.equal(health.instance, svc.instance);
  assert.equal(health.status, 'ok');
  assert.equal(health.pid, process.pid);
  assert.ok(health.rss_bytes > 0 && health.uptime_ms >= 0);
  assert.equal(health.inflight, 0);
  // `hello` only: its inner `$echo` and this `$health` are built-in ops, not
  // requests (as `handled` counts them in the Rust services).
  assert.equal(health.handled, 1, JSON.stringify(health));
  const info = await client.call('greet', '$info');
  assert.deepEqual(info.ops, ['$echo', '$health', '$info', '$metrics', '$trace', 'hello']);
  assert.equal(info.protocol, '1.3');
  assert.equal(info.version, '2.0.0');
  const metrics = await client.call('greet', '$metrics');
  assert.equal(typeof metrics, 'string');
  assert.match(metrics, /# HELP sb_service_requests_total /);
  assert.match(metrics, /sb_service_requests_total\{service="greet",op="hello",code="ok"\} 1/);
  assert.match(metrics, /sb_service_request_duration_seconds_bucket\{le="0\.0001",service="greet",op="hello"\}/);
  assert.doesNotMatch(metrics, /sb_instance/);
  const spans = await client.call('greet', '$trace', { trace: 'aaaabbbbccccdddd' });
  assert.deepEqual(spans.map((s) => s.name).sort(), ['call greet.$echo', 'handle greet.hello']);
  for (const s of spans) {
    assert.equal(s.trace, 'aaaabbbbccccdddd');
    assert.equal(s.instance, svc.instance);
    assert.equal(s.outcome, 'ok');
    assert.ok(s.start_us > 1.6e15 && s.duration_us >= 0);
  }
  await assert.rejects(client.call('greet', '$trace', 'not a map'), { code: 'bad_request' });
});

test('a handler past its deadline: the caller gets timeout and the handler its abort', async (t) => {
  const broker = await startBroker();
  t.after(() => broker.stop());
  let aborted = false;
  const { svc, client } = await pair(broker, (s) => {
    s.handle('slow', (data, ctx) => new Promise((resolve) => {
      ctx.signal.addEventListener('abort', () => { aborted = true; resolve('late'); });
    }));
  });
  t.after(async () => { await client.close(); await svc.stop(); });
  await assert.rejects(client.call('greet', 'slow', {}, { timeoutMs: 300 }), { code: 'timeout' });
  await eventually(() => aborted);
});

test('publish and subscribe, with patterns and the broker\'s ack', async (t) => {
  const broker = await startBroker();
  t.after(() => broker.stop());
  const { svc, client } = await pair(broker, (s) => {
    s.handle('join', (data, ctx) => {
      ctx.grant(`room.${data.room}`);
      return reply({ room: data.room }).revoke('room.old');
    });
  });
  t.after(async () => { await client.close(); await svc.stop(); });
  const got = [];
  const unsubscribe = await client.subscribe('room.*', (data, info) => { got.push([info.topic, data]); });
  svc.publish('room.a', { n: 1 });
  svc.publish('other.a', { n: 2 });
  svc.publish('room.b', { n: 3 });
  await eventually(() => got.length === 2);
  assert.deepEqual(got, [['room.a', { n: 1 }], ['room.b', { n: 3 }]]);
  unsubscribe();
  await new Promise((r) => setTimeout(r, 100));
  svc.publish('room.c', { n: 4 });
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(got.length, 2, 'nothing after unsubscribe');
  // A refused pattern rejects (a pattern the broker calls invalid).
  await assert.rejects(client.subscribe('bad..pattern', () => {}), { code: 'bad_request' });
  // The grant is on the wire: a raw request sees it in the reply envelope.
  const data = await client.call('greet', 'join', { room: 'x' });
  assert.deepEqual(data, { room: 'x' });
});

test('stop drains: in-flight requests finish, then nothing new arrives', async (t) => {
  const broker = await startBroker();
  t.after(() => broker.stop());
  let entered;
  const inHandler = new Promise((r) => { entered = r; });
  const { svc, client } = await pair(broker, (s) => {
    s.handle('slow', () => { entered(); return new Promise((r) => setTimeout(() => r({ done: true }), 400)); });
  });
  t.after(() => client.close());
  const inflight = client.call('greet', 'slow', {});
  // Stopped once the request is in its handler, however long it took to get there.
  await inHandler;
  const stopped = svc.stop();
  assert.deepEqual(await inflight, { done: true });
  await stopped;
  await assert.rejects(client.call('greet', 'slow', {}, { timeoutMs: 300 }), { code: 'unavailable' });
});

test('a restarted broker: the service registers again and serves', async (t) => {
  let broker = await startBroker();
  const endpoint = broker.endpoint;
  const { svc, client } = await pair(broker, (s) => s.handle('hello', () => 'hi'));
  t.after(async () => { await client.close(); await svc.stop(); await broker.stop(); });
  assert.equal(await client.call('greet', 'hello'), 'hi');
  await broker.stop();
  broker = await startBroker({ bind: endpoint });
  const answer = await eventually(() => client.call('greet', 'hello', {}, { timeoutMs: 300 }).catch(() => null));
  assert.equal(answer, 'hi');
});

test('a successor takes over the instance name; the old one drains', async (t) => {
  const broker = await startBroker();
  t.after(() => broker.stop());
  const instance = name('greet');
  const mk = (who, successor) => {
    const s = service({ name: 'greet', instance, broker: broker.endpoint, secret: SECRET, exit: false, successor, log: quiet });
    s.handle('who', () => who);
    return s;
  };
  const old = mk('old', false);
  await old.start({ signals: false });
  const client = await connect({ broker: broker.endpoint, secret: SECRET, instance: name('cli'), log: quiet });
  t.after(() => client.close());
  assert.equal(await client.call('greet', 'who'), 'old');
  const next = mk('new', true);
  await next.start({ signals: false });
  t.after(() => next.stop());
  await eventually(() => old.stopping !== null);
  await old.stopping;
  assert.equal(await client.call('greet', 'who'), 'new');
});

test('SIGTERM in a service process: it drains, says bye and exits 0', async (t) => {
  const broker = await startBroker();
  t.after(() => broker.stop());
  const instance = name('child');
  const script = `
    const { service } = require(${JSON.stringify(path.resolve(__dirname, '..'))});
    service({ name: 'child' }).handle('x', () => 1).start().then(() => console.log('ready'));
  `;
  const child = spawn(process.execPath, ['-e', script], {
    env: { ...process.env, SB_BROKER: broker.endpoint, SB_INSTANCE: instance, SB_SECRET: SECRET, SB_SUCCESSOR: '0' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise((r) => child.stdout.once('data', r));
  const client = await connect({ broker: broker.endpoint, secret: SECRET, instance: name('cli'), log: quiet });
  t.after(() => client.close());
  assert.equal(await client.call('child', 'x'), 1);
  const ls = await client.broker('ls');
  assert.ok(ls.some((i) => i.instance === instance && i.state === 'ready'), JSON.stringify(ls));
  const exited = new Promise((r) => child.once('exit', (code) => r(code)));
  child.kill('SIGTERM');
  assert.equal(await exited, 0);
  await eventually(async () => !(await client.broker('ls')).some((i) => i.instance === instance));
});

test('a broker pair: the first endpoint silent, the peer registers with the second', async (t) => {
  const broker = await startBroker();
  t.after(() => broker.stop());
  // Nothing answers on port 1: after the liveness window the peer tries the other.
  const svc = service({ name: 'greet', instance: name('greet'), broker: `tcp://127.0.0.1:1,${broker.endpoint}`, secret: SECRET, exit: false, log: quiet });
  svc.handle('hello', () => 'hi');
  await svc.start({ signals: false });
  t.after(() => svc.stop());
  const client = await connect({ broker: broker.endpoint, secret: SECRET, instance: name('cli'), log: quiet });
  t.after(() => client.close());
  assert.equal(await client.call('greet', 'hello'), 'hi');
});

test('messages held while no broker answers are bounded: past the cap, overloaded', async (t) => {
  const { Bus, MAX_HELD } = require('../lib/bus');
  const bus = new Bus({ broker: 'tcp://127.0.0.1:1', instance: name('cli'), log: quiet });
  bus.start().catch(() => {});
  t.after(() => bus.close());
  const held = [];
  for (let i = 0; i < MAX_HELD; i++) held.push(bus.call('greet', 'hello', {}, { timeoutMs: 200 }).catch((e) => e.code));
  await assert.rejects(bus.call('greet', 'hello', {}, { timeoutMs: 200 }), { code: 'overloaded' });
  // The held ones end at their deadline: unavailable (never reached a broker).
  const codes = new Set(await Promise.all(held));
  assert.deepEqual([...codes], ['unavailable']);
  // Those that ended no longer take room: the next one is held again.
  await assert.rejects(bus.call('greet', 'hello', {}, { timeoutMs: 100 }), { code: 'unavailable' });
});

test('a far deadline is not a timer that fires at once', () => {
  // setTimeout fires a delay over 2^31-1 ms after 1 ms; calls and handlers
  // clamp theirs.
  const { timerMs } = require('../lib/wire');
  assert.equal(timerMs(3e9), 2 ** 31 - 1);
  assert.equal(timerMs(-5), 0);
  assert.equal(timerMs(Number.NaN), 2 ** 31 - 1);
  assert.equal(timerMs(250), 250);
});

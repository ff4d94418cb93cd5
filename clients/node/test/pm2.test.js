'use strict';
// @switchboard/bus/pm2 against a real broker: a worker written for PM2 (only
// its require changed) in a child process, driven with PM2's own calls.

const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const path = require('node:path');
const { service } = require('..');
const { startBroker, eventually, SECRET, quiet } = require('./helpers');

function worker(broker, instance) {
  const child = spawn(process.execPath, [path.join(__dirname, 'fixtures', 'pm2-worker.js')], {
    env: { ...process.env, SB_BROKER: broker.endpoint, SB_INSTANCE: instance, SB_SECRET: SECRET, SB_SUCCESSOR: '0' },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  return child;
}

test('connect, list, sendDataToProcessId by id and name, launchBus, process.send', async (t) => {
  const broker = await startBroker();
  process.env.SB_BROKER = broker.endpoint;
  process.env.SB_SECRET = SECRET;
  const pm2 = require('../pm2');
  const w1 = worker(broker, 'legacy01');
  const w2 = worker(broker, 'legacy02');
  // A Rust-shaped service beside them (any bus service answers PM2 messages by op).
  const upper = service({ name: 'upper', instance: 'upper-1', exit: false, log: quiet });
  upper.handle('shout', (data) => ({ text: String(data.text).toUpperCase() }));
  await upper.start({ signals: false });
  t.after(async () => {
    w1.kill('SIGKILL');
    w2.kill('SIGKILL');
    await upper.stop();
    await new Promise((r) => pm2.disconnect(r));
    await broker.stop();
  });

  await new Promise((resolve, reject) => pm2.connect((err) => (err ? reject(err) : resolve())));
  const procs = await eventually(async () => {
    const list = await new Promise((resolve, reject) => pm2.list((err, l) => (err ? reject(err) : resolve(l))));
    return list.filter((p) => p.name.startsWith('legacy') && p.pm2_env.status === 'online').length === 2 && list;
  });
  const names = procs.map((p) => [p.name, p.pm_id, p.pm2_env.service]);
  assert.deepEqual(names, [
    ['legacy01', 0, 'legacy'],
    ['legacy02', 1, 'legacy'],
    ['upper-1', 2, 'upper'],
  ]);

  const heard = [];
  const bus = await new Promise((resolve, reject) => pm2.launchBus((err, b) => (err ? reject(err) : resolve(b))));
  bus.on('process:msg', (packet) => heard.push(packet));

  // By id, PM2's object form.
  const res = await new Promise((resolve, reject) =>
    pm2.sendDataToProcessId({ id: 1, type: 'process:msg', topic: 'ping', data: { n: 7 } }, (err, r) => (err ? reject(err) : resolve(r))),
  );
  assert.deepEqual(res, { success: true, data: { success: true } });
  const pong = await eventually(() => heard.find((p) => p.data.pong === 7));
  assert.equal(pong.process.name, 'legacy');
  assert.equal(pong.process.instance, 'legacy02');
  assert.equal(pong.process.pm_id, 1);
  assert.equal(typeof pong.at, 'number');

  // By name, with a user carried as the bus request's user.
  await new Promise((resolve, reject) =>
    pm2.sendDataToProcessId('legacy01', { type: 'process:msg', topic: 'ping', data: { n: 8 }, user: 'ada' }, (err, r) => (err ? reject(err) : resolve(r))),
  );
  const pong8 = await eventually(() => heard.find((p) => p.data.pong === 8));
  assert.equal(pong8.process.instance, 'legacy01');
  assert.equal(pong8.data.user, 'ada');

  // The worker asks another service (any bus service: the op is the packet's topic).
  await pm2.sendDataToProcessId('legacy01', { type: 'process:msg', topic: 'ask', data: { to: 'upper', op: 'shout', data: { text: 'hi' } } });
  const asked = await eventually(() => heard.find((p) => p.data.asked === 'upper'));
  assert.deepEqual(asked.data, { asked: 'upper', err: null, answer: { text: 'HI' } });

  // Errors keep the bus's codes.
  await assert.rejects(pm2.sendDataToProcessId(99, { topic: 'ping', data: {} }), { code: 'unknown_service' });
  await assert.rejects(pm2.sendDataToProcessId('nowhere', { topic: 'ping', data: {} }), { code: 'unknown_service' });
  await assert.rejects(pm2.sendDataToProcessId(0, { data: {} }), /topic field is missing/);
});

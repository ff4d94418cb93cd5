// Compiled by `tsc --strict` in test/types.test.js: the declarations as a
// service author uses them.
import { service, connect, reply, BusError, type Context } from '@switchboard/bus';
import pm2 = require('@switchboard/bus/pm2');

interface Say { room: string; text: string }

const chat = service({ name: 'chat', version: '1.0.0', concurrency: 32 });
chat.handle<Say, { seq: number }>('say', async (data, ctx: Context) => {
  if (!ctx.user) throw new BusError('unauthorized', 'say needs a user');
  const saved = await ctx.call<{ seq: number }>('db', 'chat.save', { ...data, user: ctx.user, ts: Date.now() }, { idem: true });
  ctx.publish(`chat.room.${data.room}`, { ...data, seq: saved.seq });
  return { seq: saved.seq };
});
chat.handle('join', (data: { room: string }, ctx) => {
  ctx.grant(`chat.room.${data.room}`);
  return reply({ room: data.room }).grant(`chat.room.${data.room}`);
});
void chat.start().then(async (s) => {
  await s.subscribe<{ user: string }>('session.close', (ev, info) => console.log(ev.user, info.topic));
});

async function client(): Promise<void> {
  const bus = await connect({ broker: 'tcp://127.0.0.1:5555', instance: 'tool-1' });
  try {
    const h = await bus.call<{ status: string }>('chat', '$health');
    console.log(h.status);
  } catch (e) {
    if (e instanceof BusError && e.code === 'unavailable') console.log('later');
  }
  await bus.close();
}
void client;

pm2.connect((err) => {
  if (err) throw err;
  pm2.list((e, procs) => {
    for (const p of procs ?? []) console.log(p.name, p.pm_id, p.pm2_env.status);
  });
  pm2.sendDataToProcessId(0, { type: 'process:msg', topic: 'ping', data: { n: 1 } }, (e, res) => {
    console.log(e?.message, res?.data);
  });
  pm2.launchBus((e, bus) => {
    bus?.on('process:msg', (packet) => console.log(packet.process.name, packet.data));
  });
});

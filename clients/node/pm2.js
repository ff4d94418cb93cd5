'use strict';
// @switchboard/bus/pm2: the part of PM2's programmatic API a PM2 system's
// services use, on the Switchboard bus. Change `require('pm2')` to
// `require('@switchboard/bus/pm2')` and the rest of the file runs as it was.
//
// What maps to what (README.md, "The PM2 layer", says it for users):
//
//   pm2.connect(cb)                      registers on the bus (this process's
//                                        service, or a pure client)
//   pm2.list(cb)                         the broker's instances (`$broker ls`):
//                                        name, pm_id, pid, pm2_env.status
//   pm2.sendDataToProcessId(id|name, packet, cb)
//                                        a bus request to that instance (by
//                                        pm_id or instance name) or service (by
//                                        service name), op = packet.topic;
//                                        cb(err, {success, data: the reply})
//   process.on('message', fn)            each request to this service, as the
//                                        packet {type, topic: op, data, id}
//   process.send(packet)                 an event on `pm2.msg.<instance>`
//   pm2.launchBus(cb) / bus.on(type, fn) a subscription to `pm2.msg.>`:
//                                        {at, data, process: {name, pm_id}}
//
// pm_ids are positions in the broker's list of instances (sorted by service,
// then instance): they change when instances come and go. Use names.

const { EventEmitter } = require('node:events');
const path = require('node:path');
const { Bus } = require('./lib/bus');
const { Service } = require('./lib/service');
const { BusError } = require('./lib/errors');
const { decodeBody, encodeBody } = require('./lib/wire');

/** The topic prefix of `process.send` packets. */
const TOPIC_PREFIX = 'pm2.msg';

let self = null; // this process's service, when it runs as one (SB_INSTANCE set)
let client = null; // the bus this module talks through
let lastList = [];

/**
 * The service this process is: `SB_SERVICE` (main sets it to the app's
 * name), else PM2's `name`, else the
 * instance's name without its trailing digits (main's `loc01` is an instance of
 * `loc`), else the script's file name.
 */
function serviceName() {
  const env = process.env;
  if (env.SB_SERVICE) return env.SB_SERVICE;
  if (env.SB_INSTANCE) return env.SB_INSTANCE.replace(/\.[^.]*$/, '').replace(/[0-9]+$/, '') || env.SB_INSTANCE;
  const main = require.main && require.main.filename;
  return main ? path.basename(main).replace(/\.[cm]?js$/, '') : 'node';
}

function callback(cb, promise) {
  if (typeof cb === 'function') {
    promise.then((v) => cb(null, v), (e) => cb(e));
    return undefined;
  }
  return promise;
}

function pm2Status(state) {
  if (state === 'ready') return 'online';
  if (state === 'draining') return 'stopping';
  return state;
}

/** A process started by main (SB_INSTANCE set) serves as its app's service. */
function startSelf() {
  if (self || !process.env.SB_INSTANCE) return;
  const name = serviceName();
  self = new Service({ name, instance: process.env.SB_INSTANCE });
  client = self.bus;
  // Every op is a PM2 message: handlers are `process.on('message')` listeners,
  // so the op names are not known ahead (`$info` lists none).
  self._handle = async (op, env) => {
    let data;
    try {
      data = decodeBody(env.body);
    } catch (e) {
      throw new BusError('bad_request', `${op}: undecodable body: ${e.message}`);
    }
    if (process.listenerCount('message') === 0) {
      throw new BusError('unavailable', `${name} has no process.on('message') listener yet`);
    }
    const packet = { type: 'process:msg', topic: op, data, id: myId() };
    if (env.user) packet.user = env.user;
    if (env.session) packet.session = env.session;
    process.emit('message', packet);
    return { body: encodeBody({ success: true }), grants: { subscribe: [], unsubscribe: [] } };
  };
  // Outside PM2 (and outside a Node IPC parent), process.send is undefined.
  process.send = (packet, ...rest) => {
    const cb = rest.find((a) => typeof a === 'function');
    try {
      if (packet && packet.type && packet.data !== undefined) {
        client.publish(`${TOPIC_PREFIX}.${self.instance}`, {
          type: packet.type,
          data: packet.data,
          topic: packet.topic,
          process: { name, instance: self.instance },
        });
      }
      if (cb) process.nextTick(cb, null);
      return true;
    } catch (e) {
      if (cb) process.nextTick(cb, e);
      return false;
    }
  };
  self.start().catch((e) => {
    console.error(`[switchboard] ${name}: cannot join the bus: ${e.message}`);
    process.exit(1);
  });
}

function myId() {
  const me = lastList.find((p) => p.name === (self && self.instance));
  return me ? me.pm_id : undefined;
}

/** pm2.connect([noDaemon], cb): joins the bus. */
function connect(noDaemon, cb) {
  if (typeof noDaemon === 'function') cb = noDaemon;
  const ready = (async () => {
    if (!client) client = new Bus({ service: '', instance: `pm2-${process.pid}` });
    await client.start();
  })();
  return callback(cb, ready);
}

/** pm2.disconnect([cb]): leaves the bus (a service process keeps serving). */
function disconnect(cb) {
  const done = (async () => {
    if (client && !self) {
      await client.close();
      client = null;
    }
  })();
  return callback(cb, done);
}

async function bus() {
  if (!client) await connect();
  await client.waitUp();
  return client;
}

/** The broker's service instances as PM2 describes processes. */
async function fetchList() {
  const b = await bus();
  const instances = (await b.broker('ls')) || [];
  const services = instances
    .filter((i) => i.service && !i.service.startsWith('$'))
    .sort((a, b) => (a.service === b.service ? (a.instance < b.instance ? -1 : 1) : a.service < b.service ? -1 : 1));
  lastList = services.map((i, n) => ({
    pid: i.pid,
    name: i.instance,
    pm_id: n,
    monit: { memory: 0, cpu: 0 },
    pm2_env: {
      name: i.instance,
      pm_id: n,
      status: pm2Status(i.state),
      service: i.service,
      instance: i.instance,
      pm_uptime: Date.now() - (i.age_ms || 0),
    },
  }));
  return lastList;
}

/** pm2.list(cb): cb(err, [{name, pm_id, pid, pm2_env: {status}}]). */
function list(cb) {
  return callback(cb, fetchList());
}

/** The bus target of a PM2 id or name: {service, instance?}. */
async function target(id) {
  const asNumber = typeof id === 'number' ? id : /^[0-9]+$/.test(String(id)) ? Number(id) : null;
  const procs = await fetchList();
  if (asNumber !== null) {
    const p = procs.find((x) => x.pm_id === asNumber);
    if (!p) throw new BusError('unknown_service', `no process with pm_id ${asNumber}`);
    return { service: p.pm2_env.service, instance: p.name };
  }
  const byInstance = procs.find((x) => x.name === id);
  if (byInstance) return { service: byInstance.pm2_env.service, instance: byInstance.name };
  // A service name: the broker picks one of its instances (or holds the
  // request while it restarts).
  return { service: String(id) };
}

/**
 * pm2.sendDataToProcessId(id, packet, cb) or ({id, type, topic, data}, cb):
 * a request to that process, op = packet.topic; the answer is
 * {success: true, data: <the reply's data>}.
 */
function sendDataToProcessId(id, packet, cb) {
  if (typeof id === 'object' && id !== null) {
    cb = packet;
    packet = id;
    id = packet.id;
  }
  const sent = (async () => {
    if (!packet || packet.data === undefined) throw new Error('data field is missing');
    if (!packet.topic) throw new Error('topic field is missing');
    const op = String(packet.topic);
    const to = await target(id);
    const b = await bus();
    const data = await b.call(to.service, op, packet.data, {
      instance: to.instance,
      user: packet.user,
      session: packet.session,
      timeoutMs: packet.timeout_ms,
    });
    return { success: true, data };
  })();
  return callback(cb, sent);
}

/** pm2.launchBus(cb): cb(err, bus) where bus.on('process:msg', fn) hears every process.send. */
function launchBus(cb) {
  const emitter = new EventEmitter();
  const started = (async () => {
    const b = await bus();
    const unsubscribe = await b.subscribe(`${TOPIC_PREFIX}.>`, async (msg) => {
      if (!msg || typeof msg !== 'object' || !msg.type) return;
      const instance = msg.process && msg.process.instance;
      let known = lastList.find((p) => p.name === instance);
      if (!known) {
        await fetchList().catch(() => {});
        known = lastList.find((p) => p.name === instance);
      }
      emitter.emit(msg.type, {
        at: Date.now(),
        data: msg.data,
        process: {
          name: (msg.process && msg.process.name) || instance,
          instance,
          pm_id: known ? known.pm_id : undefined,
        },
      });
    });
    emitter.close = () => unsubscribe();
    return emitter;
  })();
  return callback(cb, started);
}

startSelf();

module.exports = {
  connect,
  disconnect,
  list,
  sendDataToProcessId,
  launchBus,
  /** The bus itself, for what PM2's API has no word for (publish, subscribe, call). */
  get bus() {
    return client;
  },
  /** This process's service, when main started it (SB_INSTANCE set). */
  get service() {
    return self;
  },
  TOPIC_PREFIX,
};

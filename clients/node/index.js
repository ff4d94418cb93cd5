'use strict';
// @switchboard/bus: Node.js services and clients on the Switchboard bus
// (docs/protocol.md), on zeromq.js. README.md is the manual.
//
// Layout: lib/wire.js (envelopes, proofs), lib/bus.js (the connection),
// lib/service.js (handlers, built-in ops, drain), lib/trace.js ($trace spans),
// lib/errors.js (BusError), pm2.js (the PM2 compatibility layer).

const { Bus, matches } = require('./lib/bus');
const { Service, Reply } = require('./lib/service');
const { BusError, CODES } = require('./lib/errors');
const wire = require('./lib/wire');

/** A service named `name`; `handle(op, fn)` its ops, then `start()`. */
function service(opts) {
  return new Service(opts);
}

/** A pure client (no service): calls, publishes, subscribes. Resolves once registered. */
async function connect(opts = {}) {
  const bus = new Bus({ ...opts, service: '' });
  await bus.start();
  return bus;
}

/** A reply whose data goes with typed grants: `reply(data).grant(topic)`. */
function reply(data) {
  const r = new Reply(data);
  r.grant = (topic) => {
    r.grants.subscribe.push(topic);
    return r;
  };
  r.revoke = (topic) => {
    r.grants.unsubscribe.push(topic);
    return r;
  };
  return r;
}

module.exports = {
  service,
  connect,
  reply,
  Service,
  Bus,
  BusError,
  CODES,
  PROTOCOL: wire.PROTOCOL,
  newTraceId: wire.newTraceId,
  matches,
};

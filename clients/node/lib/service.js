'use strict';
// A service on the bus: what a Rust service gets from switchboard-bus's
// framework — handlers under their deadline, typed errors, grants, the
// built-in ops ($echo, $health, $info, $metrics, $trace), counters, spans,
// drain and a graceful exit on SIGTERM/SIGINT or a reload.

const promClient = require('prom-client');
const wire = require('./wire');
const { Bus } = require('./bus');
const { BusError } = require('./errors');
const { Spans } = require('./trace');

const BUILTIN_OPS = ['$echo', '$health', '$info', '$metrics', '$trace'];
/** Latency buckets, seconds: the Rust services' (crates/svc/src/metrics.rs). */
const BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5, 10];
/** `$metrics` answers at most this much (main leaves out a larger answer). */
const MAX_METRICS_BYTES = 256 * 1024;
const PACKAGE_VERSION = require('../package.json').version;

/** A handler's reply with typed grants (see `ctx.grant`). */
class Reply {
  constructor(data) {
    this.data = data;
    this.grants = { subscribe: [], unsubscribe: [] };
  }
}

class Service {
  /**
   * @param {object} opts  name (required), ops ({op: handler}), version,
   *   concurrency, graceMs, health (async () => status), exit (default true:
   *   exit the process after a drain), and the bus options (broker, instance,
   *   secret, successor).
   */
  constructor(opts) {
    if (!opts || !opts.name) throw new TypeError('service({name}) needs a name');
    this.name = opts.name;
    this.version = opts.version || '0.0.0';
    this.concurrency = opts.concurrency || 64;
    this.graceMs = opts.graceMs ?? 10000;
    this.healthFn = opts.health || null;
    this.exitOnStop = opts.exit !== false;
    this.handlers = new Map();
    this.events = [];
    this.bus = new Bus({ ...opts, service: this.name, credit: this.concurrency });
    this.instance = this.bus.instance;
    this.inflight = 0;
    this.handled = 0;
    this.errors = 0;
    this.started = Date.now();
    this.stopping = null;
    this.spans = new Spans();
    this.registry = new promClient.Registry();
    promClient.collectDefaultMetrics({ register: this.registry, prefix: 'sb_node_' });
    this.requests = new promClient.Counter({
      name: 'sb_service_requests_total',
      help: 'Requests a service handled, by op and outcome (ok or the error code).',
      labelNames: ['service', 'op', 'code'],
      registers: [this.registry],
    });
    this.latency = new promClient.Histogram({
      name: 'sb_service_request_duration_seconds',
      help: "Handler latency of a service's requests, by op.",
      labelNames: ['service', 'op'],
      buckets: BUCKETS,
      registers: [this.registry],
    });
    for (const [op, fn] of Object.entries(opts.ops || {})) this.handle(op, fn);
    this.bus.onRequest = (token, env) => this._serve(token, env);
    this.bus.on('drain', () => {
      this.bus.log('info', 'drain requested through the bus (a successor took over)');
      this.stop();
    });
  }

  /** Registers `fn(data, ctx)` for `op`; its return value is the reply's data. */
  handle(op, fn) {
    if (!wire.NAME_RE.test(op) || op.startsWith('$')) throw new TypeError(`op name ${JSON.stringify(op)}`);
    this.handlers.set(op, fn);
    return this;
  }

  /** Calls `fn(data, {topic})` for each event on `pattern` (listed in `$info`). */
  subscribe(pattern, fn) {
    this.events.push(pattern);
    return this.bus.subscribe(pattern, fn);
  }

  /** Publishes `data` on `topic`. */
  publish(topic, data) {
    return this.bus.publish(topic, data);
  }

  /** Calls another service (not on behalf of a request: use `ctx.call` in a handler). */
  call(service, op, data, opts) {
    return this.bus.call(service, op, data, opts);
  }

  /**
   * Registers, says ready and serves until SIGTERM/SIGINT or a drain; resolves
   * once ready. `signals: false` leaves the process's signals alone.
   */
  async start({ signals = true } = {}) {
    if (signals) {
      const onSignal = (sig) => {
        this.bus.log('info', `${sig}: draining`);
        this.stop();
      };
      process.once('SIGTERM', onSignal);
      process.once('SIGINT', onSignal);
    }
    await this.bus.start();
    this.started = Date.now();
    this.bus.ready();
    return this;
  }

  /**
   * Drains: out of rotation (the broker's ack), in-flight requests finished
   * within the grace period, `bye`; then exits the process unless `exit: false`.
   */
  stop() {
    if (!this.stopping) {
      this.stopping = (async () => {
        const acked = await this.bus.drain(2000);
        if (!acked) this.bus.log('warn', 'drain not acknowledged; finishing in-flight work anyway');
        const until = Date.now() + this.graceMs;
        while (this.inflight > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
        if (this.inflight > 0) this.bus.log('warn', 'in-flight requests did not finish within the grace period', { inflight: this.inflight });
        await this.bus.close();
        this.bus.log('info', 'stopped');
        if (this.exitOnStop) process.exit(0);
      })();
    }
    return this.stopping;
  }

  // === one request ===

  async _serve(token, env) {
    // The broker checks the head's types; a peer's odd ones are not trusted.
    const op = typeof env.op === 'string' ? env.op : '';
    const trace = typeof env.trace === 'string' ? env.trace : '';
    const t0 = performance.now();
    const startUs = wire.nowUs();
    this.inflight++;
    let result;
    try {
      if (this.inflight > this.concurrency) {
        // The broker keeps within our credit; a queue past it is refused, not grown.
        throw new BusError('overloaded', 'instance request queue full');
      }
      result = await this._dispatch(op, env);
    } catch (e) {
      // Handlers' own failures are BusErrors by now; anything else (a built-in
      // op that failed) is answered internal.
      const typed = e instanceof BusError || (e && e.name === 'BusError' && typeof e.code === 'string');
      if (!typed) this.bus.log('error', 'built-in op failed', { op, error: e && e.stack ? e.stack : String(e) });
      result = { error: typed ? e : new BusError('internal', 'internal error') };
    }
    try {
      this._answer(token, env, op, trace, result, t0, startUs);
    } finally {
      this.inflight--;
    }
  }

  // The reply, its metrics and its span.
  _answer(token, env, op, trace, result, t0, startUs) {
    // Requests only: main's health checks and the other `$` ops are not
    // counted, as in the Rust services' `handled`.
    if (!op.startsWith('$')) this.handled++;
    const known = this.handlers.has(op) || BUILTIN_OPS.includes(op);
    const opLabel = known ? op : 'other';
    const code = result.error ? result.error.code : 'ok';
    this.requests.inc({ service: this.name, op: opLabel, code });
    this.latency.observe({ service: this.name, op: opLabel }, (performance.now() - t0) / 1000);
    if (!op.startsWith('$')) {
      this.spans.record(trace, this.instance, `handle ${this.name}.${opLabel}`, startUs, Math.round((performance.now() - t0) * 1000), code);
    }
    if (result.error) {
      this.errors++;
      this.bus.reply(token, { id: env.id, trace, error: { code, message: result.error.message || code } });
    } else {
      const grants = result.grants && (result.grants.subscribe.length || result.grants.unsubscribe.length) ? result.grants : undefined;
      this.bus.reply(token, { id: env.id, trace, body: result.body, grants });
    }
  }

  async _dispatch(op, env) {
    switch (op) {
      case '$echo':
        return { body: env.body || new Uint8Array() };
      case '$info':
        return {
          body: wire.pack({
            service: this.name,
            instance: this.instance,
            version: this.version,
            bus_version: `node-${PACKAGE_VERSION}`,
            protocol: wire.PROTOCOL,
            ops: [...this.handlers.keys(), ...BUILTIN_OPS].sort(),
            events: this.events,
          }),
        };
      case '$health': {
        let status = 'ok';
        if (this.stopping) status = 'draining';
        else if (this.healthFn) status = String(await this.healthFn());
        return {
          body: wire.pack({
            service: this.name,
            instance: this.instance,
            status,
            pid: process.pid,
            uptime_ms: Date.now() - this.started,
            rss_bytes: process.memoryUsage.rss(),
            inflight: this.inflight - 1,
            handled: this.handled,
            errors: this.errors,
          }),
        };
      }
      case '$metrics': {
        let text = await this.registry.metrics();
        if (Buffer.byteLength(text) > MAX_METRICS_BYTES) text = text.slice(0, 0);
        return { body: wire.pack(text) };
      }
      case '$trace': {
        let q;
        try {
          q = wire.decodeBody(env.body);
        } catch {
          q = null;
        }
        if (!q || typeof q !== 'object' || typeof q.trace !== 'string') {
          throw new BusError('bad_request', '$trace takes {trace, slowest?}');
        }
        const spans = q.trace ? this.spans.of(q.trace) : this.spans.slowest(Math.min(Number(q.slowest) || 0, 100));
        return { body: wire.pack(spans) };
      }
      default:
        return this._handle(op, env);
    }
  }

  async _handle(op, env) {
    const fn = this.handlers.get(op);
    if (!fn) throw new BusError('unknown_op', `${this.name} has no op ${JSON.stringify(op)}`);
    let data;
    try {
      data = wire.decodeBody(env.body);
    } catch (e) {
      throw new BusError('bad_request', `${op}: undecodable body: ${e.message}`);
    }
    const deadline = env.deadline || Date.now() + this.bus.defaultTimeoutMs;
    const controller = new AbortController();
    const reply = new Reply(undefined);
    const ctx = this._ctx(env, op, deadline, controller.signal, reply);
    let timer;
    const expired = new Promise((_, reject) => {
      timer = setTimeout(() => {
        controller.abort();
        reject(new BusError('timeout', 'handler did not finish before the deadline'));
      }, wire.timerMs(deadline - Date.now()));
    });
    let value;
    try {
      value = await Promise.race([Promise.resolve().then(() => fn(data, ctx)), expired]);
    } catch (e) {
      if (e instanceof BusError || (e && typeof e.code === 'string' && e.name === 'BusError')) throw e;
      // A bug in the handler: logged here, `internal` to the caller (no details).
      this.bus.log('error', 'handler failed', { op, trace: env.trace, error: e && e.stack ? e.stack : String(e) });
      throw new BusError('internal', 'internal error');
    } finally {
      clearTimeout(timer);
    }
    if (value instanceof Reply) {
      reply.data = value.data;
      reply.grants.subscribe.push(...value.grants.subscribe);
      reply.grants.unsubscribe.push(...value.grants.unsubscribe);
      value = value.data;
    }
    let body;
    try {
      body = wire.encodeBody(value);
    } catch (e) {
      throw new BusError('internal', `reply does not encode: ${e.message}`);
    }
    return { body, grants: reply.grants };
  }

  /** What a handler gets besides its data. */
  _ctx(env, op, deadline, signal, reply) {
    const bus = this.bus;
    const spans = this.spans;
    const instance = this.instance;
    const trace = env.trace || '';
    return {
      op,
      service: this.name,
      instance,
      user: env.user,
      session: env.session,
      trace,
      deadline,
      signal,
      /** Calls another service on this request's behalf: its deadline, trace, user and session go along. */
      async call(service, callOp, data, opts = {}) {
        const t0 = performance.now();
        const startUs = wire.nowUs();
        let code = 'ok';
        try {
          return await bus.call(service, callOp, data, {
            deadline,
            trace,
            user: env.user,
            session: env.session,
            ...opts,
          });
        } catch (e) {
          code = e.code || 'internal';
          throw e;
        } finally {
          spans.record(trace, instance, `call ${service}.${callOp}`, startUs, Math.round((performance.now() - t0) * 1000), code);
        }
      },
      publish: (topic, data) => bus.publish(topic, data),
      /** Subscribes the calling client to `topic` (the gateway applies it within its policy). */
      grant(topic) {
        reply.grants.subscribe.push(topic);
      },
      /** Unsubscribes the calling client from `topic`. */
      revoke(topic) {
        reply.grants.unsubscribe.push(topic);
      },
    };
  }
}

module.exports = { Service, Reply, BUILTIN_OPS };

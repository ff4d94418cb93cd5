'use strict';
// One peer's connection to the broker: a zeromq.js DEALER, the registration
// handshake (with the secret's mutual proofs), heartbeats both ways, reconnects
// (and the broker pair's failover), requests with deadlines, publish and
// subscribe. docs/protocol.md is the contract; the comments name its sections.

const { EventEmitter } = require('node:events');
const crypto = require('node:crypto');
const zmq = require('zeromq');
const wire = require('./wire');
const { BusError } = require('./errors');

const DEFAULT_BROKER = 'tcp://127.0.0.1:5555';
/** How long a call waits when it names no deadline (the Rust client's default). */
const DEFAULT_TIMEOUT_MS = 5000;
/** Grace past a call's deadline before giving up on the broker's answer. */
const DEADLINE_GRACE_MS = 250;
/** Messages held while the broker is not reachable; past it, `overloaded`. */
const MAX_HELD = 4096;
/** Events queued for one subscription's handler; past it they are dropped and counted. */
const SUB_CAPACITY = 1024;
/** Backoff after every endpoint failed: 100 ms doubling to 1 s, with jitter. */
const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 1000;

/** Whether `topic` matches `pattern` (`*` one token, `>` last: one or more). */
function matches(pattern, topic) {
  const p = pattern.split('.');
  const t = topic.split('.');
  for (let i = 0; i < p.length; i++) {
    if (p[i] === '>') return i === p.length - 1 && t.length > i;
    if (i >= t.length) return false;
    if (p[i] !== '*' && p[i] !== t[i]) return false;
  }
  return p.length === t.length;
}

class Bus extends EventEmitter {
  /**
   * @param {object} opts  service ('' for a pure client), instance, broker,
   *   secret, successor, credit, defaultTimeoutMs, log.
   */
  constructor(opts = {}) {
    super();
    const env = process.env;
    this.service = opts.service || '';
    this.instance = opts.instance || env.SB_INSTANCE || `${this.service || 'node'}-${process.pid}`;
    if (!wire.NAME_RE.test(this.instance)) throw new BusError('bad_request', `instance name ${JSON.stringify(this.instance)}`);
    if (this.service && (!wire.NAME_RE.test(this.service) || this.service.startsWith('$'))) {
      throw new BusError('bad_request', `service name ${JSON.stringify(this.service)}`);
    }
    this.endpoints = String(opts.broker || env.SB_BROKER || DEFAULT_BROKER)
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    const secret = opts.secret !== undefined ? opts.secret : env.SB_SECRET;
    this.secret = secret ? String(secret) : null;
    // Only the first registration takes over a live instance (a reload); a
    // re-registration after a broker restart is this process's own name again.
    this.successor = opts.successor !== undefined ? !!opts.successor : env.SB_SUCCESSOR === '1';
    this.credit = opts.credit || 64;
    this.defaultTimeoutMs = opts.defaultTimeoutMs || DEFAULT_TIMEOUT_MS;
    this.log = opts.log || ((level, msg, fields) => {
      if (level !== 'debug') console.error(`[switchboard] ${level} ${msg}${fields ? ' ' + JSON.stringify(fields) : ''}`);
    });
    /** Set by a service: `(token, env) => void` for each request. */
    this.onRequest = null;

    this.closed = false;
    this.up = false;
    this.sessionNo = 0;
    this.sock = null;
    this.outbox = [];
    this.writing = false;
    this.held = [];
    this.nextId = 1;
    this.pending = new Map();
    this.subs = new Map(); // pattern -> { handlers: Set, acked: bool }
    this.subAcks = new Map(); // id -> { resolve, reject, pattern }
    this.wantReady = false;
    this.draining = null; // { resolve } while a drain waits for its ack
    this.heartbeatMs = 1000;
    this.liveness = 3;
    this.maxMessage = 1 << 20;
    this.stats = { malformed: 0, eventsDropped: 0, reconnects: 0 };
    this._upWaiters = [];
    this._fatal = null;
    this._endSession = () => {};
  }

  // === lifecycle ===

  /** Connects and registers; resolves once the broker accepted this peer. */
  start() {
    if (!this._running) this._running = this._run();
    return this.waitUp();
  }

  /** Resolves once registered (rejects if registration was refused for good). */
  waitUp() {
    if (this.up) return Promise.resolve();
    if (this._fatal) return Promise.reject(this._fatal);
    return new Promise((resolve, reject) => this._upWaiters.push({ resolve, reject }));
  }

  /** Tells the broker this service takes requests (and again after each re-registration). */
  ready() {
    this.wantReady = true;
    if (this.up) this._write([wire.encodeEnvelope('ready', { from: this.instance })]);
  }

  /**
   * Out of rotation: sends `drain` and resolves once the broker acknowledged it
   * (nothing new arrives after the ack), or after `timeoutMs`.
   */
  drain(timeoutMs = 2000) {
    this.wantReady = false;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.draining = null;
        resolve(false);
      }, timeoutMs);
      this.draining = {
        resolve: () => {
          clearTimeout(timer);
          this.draining = null;
          resolve(true);
        },
      };
      if (this.up) this._write([wire.encodeEnvelope('drain', { from: this.instance })]);
    });
  }

  /** Says `bye` and closes the socket; pending calls fail with `unavailable`. */
  async close() {
    if (this.closed) return;
    if (this.up) {
      this._write([wire.encodeEnvelope('bye', { from: this.instance })]);
      // Let the writer hand `bye` to the socket before it closes (linger 0).
      const until = Date.now() + 500;
      while ((this.outbox.length > 0 || this.writing) && Date.now() < until) {
        await new Promise((r) => setTimeout(r, 5));
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    this.closed = true;
    this.up = false;
    this._endSession('closed');
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      clearTimeout(p.timer);
      p.reject(new BusError('unavailable', 'the bus connection was closed'));
    }
    for (const h of this.held) h.reject?.(new BusError('unavailable', 'the bus connection was closed'));
    this.held = [];
    if (this._running) await this._running.catch(() => {});
  }

  async _run() {
    let index = 0;
    let failures = 0;
    while (!this.closed) {
      const endpoint = this.endpoints[index % this.endpoints.length];
      const registered = await this._session(endpoint);
      if (this.closed || this._fatal) break;
      this.stats.reconnects++;
      if (registered) {
        // Lost a broker we were registered with: the same endpoint first
        // (a restarted broker), then the other of a pair.
        failures = 0;
        if (this.endpoints.length > 1) index++;
        continue;
      }
      failures++;
      index++;
      if (failures >= this.endpoints.length) {
        const n = Math.min(failures - this.endpoints.length, 4);
        const ms = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** n);
        await new Promise((r) => setTimeout(r, ms / 2 + Math.random() * (ms / 2)));
      }
    }
  }

  /** One connection to `endpoint`; resolves when it ends, with whether it registered. */
  _session(endpoint) {
    return new Promise((resolveSession) => {
      const no = ++this.sessionNo;
      const sock = new zmq.Dealer({ linger: 0, sendHighWaterMark: 100000, receiveHighWaterMark: 100000 });
      this.sock = sock;
      this.outbox = [];
      let registered = false;
      let lastHeard = Date.now();
      let challenge = null;
      let proven = false;
      const hello = {
        service: this.service,
        instance: this.instance,
        pid: process.pid,
        credit: this.credit,
      };
      if (this.successor) hello.successor = true;
      const sendHello = () => this._write([wire.encodeEnvelope('hello', { from: this.instance, body: wire.pack(hello) })]);

      const timer = setInterval(() => {
        const silentFor = Date.now() - lastHeard;
        if (silentFor > this.heartbeatMs * this.liveness) {
          this.log('debug', 'broker silent; reconnecting', { endpoint, silent_ms: silentFor });
          end(registered);
          return;
        }
        if (this.up) this._write([wire.encodeEnvelope('heartbeat', { from: this.instance })]);
      }, Math.max(50, Math.min(this.heartbeatMs, 1000)));

      let ended = false;
      const end = (wasRegistered) => {
        if (ended) return;
        ended = true;
        clearInterval(timer);
        const wasUp = this.up;
        this.up = false;
        if (this.sock === sock) this.sock = null;
        try {
          sock.close();
        } catch {}
        if (wasUp) this.emit('disconnected');
        // Requests sent on this connection get no reply from here: answered at once.
        for (const [id, p] of this.pending) {
          if (p.session !== no) continue;
          this.pending.delete(id);
          clearTimeout(p.timer);
          p.reject(new BusError('unavailable', 'the connection to the broker was lost before the reply'));
        }
        for (const [, w] of this.subAcks) w.resolve(false);
        this.subAcks.clear();
        for (const s of this.subs.values()) s.acked = false;
        resolveSession(wasRegistered);
      };
      this._endSession = (why) => {
        this.log('debug', 'session ended', { why });
        end(registered);
      };

      const onHello = (env) => {
        if (env.error) {
          const err = new BusError(env.error.code, env.error.message);
          if (env.error.code === 'unavailable') {
            // A passive broker of a pair, or our name held by a live process.
            this.log('warn', 'registration refused; trying again', { endpoint, error: err.message });
            end(false);
          } else {
            this.log('error', 'registration refused', { endpoint, code: err.code, error: err.message });
            this._fail(err);
            end(false);
          }
          return;
        }
        let answer;
        try {
          answer = wire.unpack(env.body);
        } catch {
          this.stats.malformed++;
          return;
        }
        if (answer.accepted) {
          if (challenge && !proven) {
            this.log('error', 'the broker accepted without proving the secret: not our broker', { endpoint });
            end(false);
            return;
          }
          this.heartbeatMs = answer.heartbeat_ms || 1000;
          this.liveness = answer.liveness || 3;
          this.maxMessage = answer.max_message || this.maxMessage;
          registered = true;
          this.successor = false;
          this._onRegistered();
          return;
        }
        if (answer.nonce) {
          if (challenge) {
            const expected = wire.brokerProof(this.secret, challenge, answer.nonce, this.service, this.instance);
            if (!wire.sameBytes(expected, answer.proof)) {
              this.log('error', 'the broker did not prove the secret: not our broker', { endpoint });
              end(false);
              return;
            }
            proven = true;
          }
          if (!this.secret) {
            this._fail(new BusError('unauthorized', 'the broker asks for the bus secret (SB_SECRET) and none is set'));
            end(false);
            return;
          }
          hello.proof = wire.helloProof(this.secret, answer.nonce, this.service, this.instance);
          sendHello();
        }
      };

      (async () => {
        try {
          sock.connect(endpoint);
        } catch (e) {
          this.log('error', 'cannot connect', { endpoint, error: e.message });
          end(false);
          return;
        }
        if (this.secret) {
          challenge = crypto.randomBytes(32);
          hello.challenge = challenge;
        }
        sendHello();
        try {
          for await (const frames of sock) {
            lastHeard = Date.now();
            const env = wire.decodeEnvelope(frames[frames.length - 1]);
            if (!env || frames.length > 2) {
              this.stats.malformed++;
              continue;
            }
            switch (env.kind) {
              case 'hello':
                onHello(env);
                break;
              case 'bye':
                // The broker does not know us (it restarted, or declared us dead).
                this.log('info', 'the broker forgot this peer; registering again', { endpoint });
                end(registered);
                return;
              case 'request':
                if (frames.length === 2 && this.onRequest) {
                  // A request that fails past its own error handling is logged,
                  // never an unhandled rejection (which ends a Node process).
                  Promise.resolve(this.onRequest(frames[0], env)).catch((e) =>
                    this.log('error', 'request failed', { error: e && e.stack ? e.stack : String(e) }));
                }
                break;
              case 'reply':
                this._onReply(env);
                break;
              case 'event':
                this._onEvent(env);
                break;
              case 'subscribe':
                this._onSubscribeAnswer(env);
                break;
              case 'drain':
                if (env.op === 'ack') this.draining?.resolve();
                else this.emit('drain');
                break;
              default:
                break;
            }
            if (ended) return;
          }
        } catch (e) {
          if (!ended) this.log('debug', 'receive ended', { error: e.message });
        }
        end(registered);
      })();
    });
  }

  _fail(err) {
    this._fatal = err;
    for (const w of this._upWaiters) w.reject(err);
    this._upWaiters = [];
  }

  _onRegistered() {
    this.up = true;
    if (this.wantReady) this._write([wire.encodeEnvelope('ready', { from: this.instance })]);
    if (this.draining) this._write([wire.encodeEnvelope('drain', { from: this.instance })]);
    for (const pattern of this.subs.keys()) this._sendSubscribe(pattern);
    const held = this.held;
    this.held = [];
    for (const h of held) this._sendNow(h);
    for (const w of this._upWaiters) w.resolve();
    this._upWaiters = [];
    this.emit('connected');
  }

  // === sending ===

  /** Queues frames for the socket's one writer (zeromq.js allows one send at a time). */
  _write(frames) {
    if (!this.sock) return;
    this.outbox.push(frames);
    if (!this.writing) this._flush(this.sock);
  }

  async _flush(sock) {
    this.writing = true;
    try {
      while (this.outbox.length > 0 && this.sock === sock) {
        const frames = this.outbox.shift();
        try {
          await sock.send(frames.length === 1 ? frames[0] : frames);
        } catch (e) {
          if (this.sock === sock) this.log('debug', 'send failed', { error: e.message });
          break;
        }
      }
    } finally {
      this.writing = false;
    }
    if (this.outbox.length > 0 && this.sock && this.sock !== sock) this._flush(this.sock);
  }

  /** Sends a message that needs a registered connection, or holds it until there is one. */
  _send(item) {
    if (this.closed) throw new BusError('unavailable', 'the bus connection is closed');
    if (item.bytes.length > this.maxMessage) {
      throw new BusError('too_large', `message of ${item.bytes.length} bytes over the bus limit of ${this.maxMessage}`);
    }
    if (this.up) return this._sendNow(item);
    if (this.held.length >= MAX_HELD) throw new BusError('overloaded', 'bus send queue full (the broker is not reachable)');
    this.held.push(item);
  }

  _sendNow(item) {
    if (item.id) {
      const p = this.pending.get(item.id);
      if (!p) return; // timed out while held
      p.session = this.sessionNo;
    }
    this._write(item.token ? [item.token, item.bytes] : [item.bytes]);
  }

  /** Answers a request: `[token, reply envelope]`. */
  reply(token, fields) {
    let bytes = wire.encodeEnvelope('reply', { from: this.instance, ...fields });
    if (bytes.length + token.length > this.maxMessage) {
      bytes = wire.encodeEnvelope('reply', {
        from: this.instance,
        id: fields.id,
        trace: fields.trace,
        error: { code: 'too_large', message: `reply of ${bytes.length} bytes over the bus limit` },
      });
    }
    // A reply to a request from the current connection only (the token is the broker's).
    this._write([token, bytes]);
  }

  /**
   * Sends a request; resolves with the reply's data (decoded MessagePack, or
   * the raw body with `raw: true`), rejects with a BusError.
   */
  call(service, op, data, opts = {}) {
    const now = Date.now();
    const deadline = opts.deadline || now + (opts.timeoutMs ?? this.defaultTimeoutMs);
    const id = this.nextId++;
    const body = opts.raw ? data : wire.encodeBody(data);
    const bytes = wire.encodeEnvelope('request', {
      id,
      from: this.instance,
      to: service,
      op,
      deadline,
      trace: opts.trace || wire.newTraceId(),
      instance: opts.instance,
      key: opts.key,
      user: opts.user,
      session: opts.session,
      idem: !!opts.idem,
      body,
    });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.pending.delete(id)) {
          // Held and never sent: it no longer counts against the cap.
          if (!this.up) this.held = this.held.filter((h) => h.id !== id);
          reject(new BusError(this.up ? 'timeout' : 'unavailable', `${service}.${op}: no answer before the deadline`));
        }
      }, wire.timerMs(deadline - now + DEADLINE_GRACE_MS));
      this.pending.set(id, { resolve, reject, timer, raw: !!opts.raw, session: 0 });
      try {
        this._send({ id, bytes });
      } catch (e) {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(e);
      }
    });
  }

  _onReply(env) {
    const p = this.pending.get(env.id);
    if (!p) return;
    this.pending.delete(env.id);
    clearTimeout(p.timer);
    if (env.error) {
      p.reject(new BusError(env.error.code || 'internal', env.error.message || ''));
      return;
    }
    if (p.raw) return p.resolve(env.body ? Buffer.from(env.body) : Buffer.alloc(0));
    try {
      p.resolve(wire.decodeBody(env.body));
    } catch (e) {
      p.reject(new BusError('internal', `undecodable reply body: ${e.message}`));
    }
  }

  // === publish / subscribe ===

  /** Publishes `data` on `topic` (at most once, best effort). */
  publish(topic, data) {
    const bytes = wire.encodeEnvelope('event', { from: this.instance, to: topic, body: wire.encodeBody(data) });
    this._send({ bytes });
  }

  /**
   * Calls `fn(data, {topic})` for each event matching `pattern`; resolves with
   * a function that unsubscribes, once the broker holds the pattern.
   */
  async subscribe(pattern, fn) {
    let sub = this.subs.get(pattern);
    if (!sub) {
      sub = { handlers: new Set(), acked: false };
      this.subs.set(pattern, sub);
      if (this.up) {
        const ok = await this._sendSubscribe(pattern);
        if (ok instanceof Error) {
          this.subs.delete(pattern);
          throw ok;
        }
      }
    }
    const handler = { fn, queue: [], running: false };
    sub.handlers.add(handler);
    return () => {
      sub.handlers.delete(handler);
      if (sub.handlers.size === 0 && this.subs.get(pattern) === sub) {
        this.subs.delete(pattern);
        if (this.up) this._write([wire.encodeEnvelope('unsubscribe', { from: this.instance, to: pattern })]);
      }
    };
  }

  _sendSubscribe(pattern) {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.subAcks.set(id, { resolve, pattern });
      this._write([wire.encodeEnvelope('subscribe', { id, from: this.instance, to: pattern })]);
    });
  }

  _onSubscribeAnswer(env) {
    const w = this.subAcks.get(env.id);
    if (env.error) {
      const err = new BusError(env.error.code, `subscribe ${env.to}: ${env.error.message}`);
      this.log('warn', 'subscription refused', { pattern: env.to, code: env.error.code });
      if (w) {
        this.subAcks.delete(env.id);
        w.resolve(err);
      }
      return;
    }
    if (w) {
      this.subAcks.delete(env.id);
      const sub = this.subs.get(w.pattern);
      if (sub) sub.acked = true;
      w.resolve(true);
    }
  }

  _onEvent(env) {
    const topic = env.to || '';
    let data;
    try {
      data = wire.decodeBody(env.body);
    } catch {
      this.stats.malformed++;
      return;
    }
    for (const [pattern, sub] of this.subs) {
      if (!matches(pattern, topic)) continue;
      for (const h of sub.handlers) {
        // Bounded: a handler slower than its events loses the excess (counted),
        // as the broker does for a slow subscriber.
        if (h.queue.length >= SUB_CAPACITY) {
          this.stats.eventsDropped++;
          continue;
        }
        h.queue.push({ data, topic });
        if (!h.running) this._drainQueue(h);
      }
    }
  }

  async _drainQueue(h) {
    h.running = true;
    while (h.queue.length > 0) {
      const { data, topic } = h.queue.shift();
      try {
        await h.fn(data, { topic });
      } catch (e) {
        this.log('warn', 'event handler failed', { topic, error: e && e.message });
      }
    }
    h.running = false;
  }

  /** The broker's own ops (`$broker`): `ls`, `stats`, … */
  broker(op, data, opts) {
    return this.call('$broker', op, data, opts);
  }
}

module.exports = { Bus, matches, DEFAULT_BROKER, DEFAULT_TIMEOUT_MS, SUB_CAPACITY, MAX_HELD };

// Switchboard's JavaScript client: one WebSocket to the gateway, requests as
// promises, subscriptions, reconnects, and chat rooms that catch up on what
// they missed. No dependencies; browsers and Node 20+ (Node 20 needs
// `--experimental-websocket`, or pass `{WebSocket}` from the `ws` package).
// The protocol is docs/clients.md and docs/services.md (receive); types are in switchboard.d.ts.

import { encode, decode } from './msgpack.js';

/** The gateway's error codes, plus the client's own `disconnected`. */
export const CODES = Object.freeze([
  'bad_request', 'too_large', 'unknown_service', 'unknown_op', 'unavailable', 'timeout',
  'worker_lost', 'overloaded', 'unauthorized', 'forbidden', 'internal', 'disconnected',
]);

/** A request that failed: `code` is one of {@link CODES}. */
export class SwitchboardError extends Error {
  constructor(code, message, trace) {
    super(`${code}: ${message}`);
    this.name = 'SwitchboardError';
    this.code = code;
    this.detail = message;
    if (trace) this.trace = trace;
  }
}

/** NATS-style topic matching: `*` one token, `>` the rest (last token only). */
export function topicMatches(pattern, topic) {
  if (pattern === topic) return true;
  const p = pattern.split('.');
  const t = topic.split('.');
  for (let i = 0; i < p.length; i++) {
    if (p[i] === '>') return i === p.length - 1 && t.length > i;
    if (i >= t.length) return false;
    if (p[i] !== '*' && p[i] !== t[i]) return false;
  }
  return p.length === t.length;
}

const DEFAULTS = {
  timeout: 5000,
  backoff: { initial: 250, max: 10000, factor: 2 },
  queueLimit: 1000,
  binary: false,
  history: 50,
  maxCatchUp: 1000,
  refreshBefore: 60,
};

// Live events a room holds while it catches up, at most.
const MAX_BUFFERED = 10000;

// Close codes after which reconnecting at once is right: the gateway is
// going away (reload, shutdown) and its successor is, or soon will be, up.
const GOING_AWAY = 1001;

/**
 * Connects to a gateway (`ws://HOST:3000/ws` or `wss://…`).
 *
 * @param {string} url
 * @param {import('./switchboard.js').Options} [options]
 */
export function connect(url, options = {}) {
  return new Client(url, options);
}

export class Client {
  constructor(url, options = {}) {
    this.url = url;
    this.options = {
      ...DEFAULTS,
      ...options,
      backoff: { ...DEFAULTS.backoff, ...(options.backoff || {}) },
    };
    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    if (!this._WebSocket) {
      throw new Error('no WebSocket here: on Node 20 run with --experimental-websocket, or pass {WebSocket}');
    }
    /** 'connecting' | 'open' | 'reconnecting' | 'closed' */
    this.state = 'connecting';
    /** The user the gateway stamps on this connection's requests. */
    this.user = null;
    /** When the token ends (seconds since the epoch), if the gateway has auth. */
    this.expires = null;
    /** Connections made so far (1 after the first open). */
    this.connections = 0;
    this._ws = null;
    this._nextId = 1;
    this._pending = new Map(); // id -> request
    this._queue = []; // requests waiting for an open connection, in order
    this._subs = new Map(); // topic pattern -> Set(handler), restored on reconnect
    this._rooms = new Map(); // chat room -> Room
    this._listeners = new Map(); // client event name -> Set(fn)
    this._attempt = 0;
    this._timer = null;
    this._refreshTimer = null;
    this._ready = null;
    this._closedByUser = false;
    // The first attempt after the current task: listeners added right after
    // connect() hear everything, from `connecting` on.
    this._timer = setTimeout(() => this._openSocket(), 0);
  }

  // ---- public API --------------------------------------------------------

  /**
   * One request. Resolves with the reply's data; rejects with a
   * SwitchboardError. While disconnected the request waits (up to its
   * timeout) and is sent once the connection is back. A request already sent
   * when the connection drops fails with `disconnected`, unless `retry: true`
   * says it is safe to send again (idempotent, or carrying an idempotency key).
   */
  request(to, op, data = {}, opts = {}) {
    const frame = { op, data };
    if (to) frame.to = to;
    return this._request(frame, opts);
  }

  /** Resolves once the connection is open (and subscriptions are restored). */
  ready() {
    if (this.state === 'open') return Promise.resolve(this);
    if (this.state === 'closed') return Promise.reject(new SwitchboardError('disconnected', 'client closed'));
    if (!this._ready) {
      let resolve;
      let reject;
      const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
      this._ready = { promise, resolve, reject };
    }
    return this._ready.promise;
  }

  /**
   * Subscribes to a topic or pattern (within the gateway's client policy) and
   * calls `handler(data, topic)` for each event; restored after a reconnect.
   * Resolves once the gateway confirmed; returns a function that unsubscribes.
   */
  async subscribe(topic, handler, opts = {}) {
    let handlers = this._subs.get(topic);
    const first = !handlers;
    if (first) {
      handlers = new Set();
      this._subs.set(topic, handlers);
    }
    handlers.add(handler);
    if (first) {
      try {
        await this._request({ op: 'subscribe', topic }, opts);
      } catch (e) {
        handlers.delete(handler);
        if (handlers.size === 0) this._subs.delete(topic);
        throw e;
      }
    }
    return () => this.unsubscribe(topic, handler);
  }

  /** Removes one handler (or all, without one); the last one unsubscribes. */
  async unsubscribe(topic, handler) {
    const handlers = this._subs.get(topic);
    if (!handlers) return;
    if (handler) handlers.delete(handler); else handlers.clear();
    if (handlers.size > 0) return;
    this._subs.delete(topic);
    if (this.state === 'open') {
      await this._request({ op: 'unsubscribe', topic }).catch(() => {});
    }
  }

  /**
   * Listens to the client's own events: `state` (the current state at once,
   * then each new one), `open` ({user,
   * reconnected}), `close` ({code, reason}), `event` (every pushed event, those
   * from grants such as chat `join` included: {topic, data}), `gap` ({room,
   * from, to}: more was missed than `maxCatchUp`), `error` (a failed getToken,
   * an undecodable frame; printed with console.error when nobody listens). Returns a function
   * that stops listening.
   */
  on(name, fn) {
    let set = this._listeners.get(name);
    if (!set) { set = new Set(); this._listeners.set(name, set); }
    set.add(fn);
    // A state listener hears the state it joins in (after the current task),
    // then each change: `connecting` is never missed by a listener added
    // right after connect().
    if (name === 'state') {
      const now = this.state;
      queueMicrotask(() => { if (set.has(fn)) this._call(fn, now); });
    }
    return () => set.delete(fn);
  }

  /**
   * Joins a chat room: `handler(message, info)` gets `{seq, user, text, ts,
   * room}` once each, in order. First the room's last `history` messages
   * (info.replayed), then live ones; after a reconnect, the ones missed while
   * away (info.caughtUp) before new ones, never twice.
   */
  async joinRoom(room, handler, opts = {}) {
    if (this._rooms.has(room)) throw new Error(`already in room ${room}`);
    const r = new Room(this, room, handler, opts.history ?? this.options.history);
    this._rooms.set(room, r);
    try {
      await r.join(false);
    } catch (e) {
      this._rooms.delete(room);
      throw e;
    }
    return r;
  }

  /** Closes for good: pending requests fail with `disconnected`. */
  close() {
    this._closedByUser = true;
    clearTimeout(this._timer);
    clearTimeout(this._refreshTimer);
    this._setState('closed');
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.close(1000, 'client closed');
    this._failAll(new SwitchboardError('disconnected', 'client closed'), true);
    if (this._ready) { this._ready.reject(new SwitchboardError('disconnected', 'client closed')); this._ready = null; }
  }

  // ---- requests ------------------------------------------------------------

  _request(frame, opts = {}) {
    if (this.state === 'closed') {
      return Promise.reject(new SwitchboardError('disconnected', 'client closed'));
    }
    const id = this._nextId++;
    frame.id = id;
    const timeout = opts.timeout ?? this.options.timeout;
    return new Promise((resolve, reject) => {
      const req = { id, frame, resolve, reject, retry: !!opts.retry, sent: false, priority: !!opts.priority };
      req.timer = setTimeout(() => {
        this._pending.delete(id);
        this._dequeue(req);
        reject(new SwitchboardError('timeout', `no reply within ${timeout} ms${req.sent ? '' : ' (not connected)'}`));
      }, timeout);
      this._pending.set(id, req);
      if (this.state === 'open' || (req.priority && this._ws && this._ws.readyState === 1)) {
        this._send(req);
      } else {
        if (this._queue.length >= this.options.queueLimit) {
          clearTimeout(req.timer);
          this._pending.delete(id);
          reject(new SwitchboardError('overloaded', `more than ${this.options.queueLimit} requests waiting for the connection`));
          return;
        }
        this._queue.push(req);
      }
    });
  }

  _send(req) {
    req.sent = true;
    try {
      const f = req.frame;
      this._ws.send(this.options.binary ? encode(f) : JSON.stringify(f));
    } catch (e) {
      // The socket closed under us: the close handler decides.
      req.sent = false;
      this._queue.push(req);
    }
  }

  _dequeue(req) {
    const i = this._queue.indexOf(req);
    if (i >= 0) this._queue.splice(i, 1);
  }

  _settle(frame) {
    const req = this._pending.get(frame.id);
    if (!req) return; // late: timed out already
    this._pending.delete(frame.id);
    clearTimeout(req.timer);
    if (frame.ok) req.resolve(frame.data ?? {});
    else {
      const err = frame.error || {};
      req.reject(new SwitchboardError(err.code || 'internal', err.message || 'no message', frame.trace));
    }
  }

  _failAll(error, includeQueued) {
    const again = [];
    for (const req of [...this._pending.values()]) {
      if (!includeQueued && !req.sent) continue;
      if (!includeQueued && req.retry) {
        // Safe to send again: back in the queue, ahead of newer requests.
        req.sent = false;
        again.push(req);
        continue;
      }
      clearTimeout(req.timer);
      this._pending.delete(req.id);
      this._dequeue(req);
      req.reject(error);
    }
    if (includeQueued) this._queue = [];
    else this._queue.unshift(...again);
  }

  // ---- the connection --------------------------------------------------------

  async _openSocket() {
    let url = this.url;
    try {
      const token = this.options.getToken ? await this.options.getToken() : this.options.token;
      if (this._closedByUser) return;
      if (token) url += (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token);
    } catch (e) {
      this._emit('error', new Error(`getToken failed: ${e && e.message ? e.message : e}`, { cause: e }));
      this._setState('reconnecting');
      this._scheduleReconnect();
      return;
    }
    let ws;
    try {
      ws = new this._WebSocket(url);
    } catch (e) {
      this._emit('error', e);
      this._setState('reconnecting');
      this._scheduleReconnect();
      return;
    }
    ws.binaryType = 'arraybuffer';
    this._ws = ws;
    ws.onopen = () => { if (this._ws === ws) this._onOpen(); };
    ws.onmessage = (m) => { if (this._ws === ws) this._onMessage(m.data); };
    let closed = false;
    const onClose = (code, reason) => {
      if (closed || this._ws !== ws) return;
      closed = true;
      this._onClose(code, reason);
    };
    ws.onclose = (e) => onClose(e.code, e.reason);
    let opened = false;
    ws.addEventListener('open', () => { opened = true; });
    // Browsers fire close after error; Node 20's WebSocket fires only error
    // when a connection fails (refused, HTTP 401) and stays CONNECTING, so a
    // failed connect is handled here.
    ws.onerror = () => { if (!opened) { onClose(1006, 'connection failed'); try { ws.close(); } catch { /* never opened */ } } };
  }

  async _onOpen() {
    const reconnected = this.connections > 0;
    this.connections += 1;
    try {
      // Restore this connection's state before anything queued goes out:
      // who we are, subscriptions, rooms (which then catch up).
      const me = await this._request({ op: 'whoami' }, { priority: true });
      this.user = me.user ?? null;
      this.expires = me.expires ?? null;
      this._scheduleRefresh();
      await Promise.all([...this._subs.keys()].map((topic) =>
        this._request({ op: 'subscribe', topic }, { priority: true }).catch((e) => {
          // Refused now (the policy changed, say): drop it and say so, rather
          // than reconnect for ever. Anything else: retry the connection.
          if (e.code !== 'forbidden' && e.code !== 'bad_request') throw e;
          this._subs.delete(topic);
          this._emit('error', e);
        })));
    } catch (e) {
      this._emit('error', e);
      if (this._ws) this._ws.close(4100, 'could not restore the session');
      return;
    }
    this._attempt = 0;
    this._setState('open');
    const queued = this._queue;
    this._queue = [];
    for (const req of queued) this._send(req);
    for (const room of this._rooms.values()) if (reconnected) room.join(true).catch((e) => this._emit('error', e));
    if (this._ready) { this._ready.resolve(this); this._ready = null; }
    this._emit('open', { user: this.user, reconnected });
  }

  _onMessage(raw) {
    let frame;
    try {
      frame = typeof raw === 'string' ? JSON.parse(raw) : decode(new Uint8Array(raw));
    } catch (e) {
      this._emit('error', new Error(`undecodable frame: ${e.message}`));
      return;
    }
    if (frame === null || typeof frame !== 'object') return;
    if (frame.goaway) {
      // The gateway is going away: send nothing more here (new requests wait
      // in the queue); the replies in flight still arrive before its close.
      this._setState('reconnecting');
      return;
    }
    if ('id' in frame && 'ok' in frame) return this._settle(frame);
    if (typeof frame.topic === 'string') {
      this._emit('event', { topic: frame.topic, data: frame.data });
      for (const [pattern, handlers] of this._subs) {
        if (!topicMatches(pattern, frame.topic)) continue;
        for (const h of handlers) this._call(h, frame.data, frame.topic);
      }
      if (frame.topic.startsWith('chat.room.')) {
        const room = this._rooms.get(frame.topic.slice('chat.room.'.length));
        if (room) room.event(frame.data);
      }
    }
    return undefined;
  }

  _onClose(code, reason) {
    this._ws = null;
    clearTimeout(this._refreshTimer);
    this._emit('close', { code, reason });
    // Requests sent on this connection have no answer coming.
    this._failAll(new SwitchboardError('disconnected', `connection closed (${code}) before the reply; the request may or may not have been done`), false);
    if (this._closedByUser) return;
    this._setState('reconnecting');
    if (code === GOING_AWAY) this._attempt = 0;
    this._scheduleReconnect(code === GOING_AWAY);
  }

  _scheduleReconnect(soon = false) {
    if (this._closedByUser) return;
    const { initial, max, factor } = this.options.backoff;
    const ceiling = Math.min(max, initial * factor ** this._attempt);
    // Jitter over the upper half: a thousand clients of a restarted gateway
    // do not come back in the same millisecond.
    const delay = soon ? Math.random() * 100 : ceiling / 2 + Math.random() * ceiling / 2;
    this._attempt += 1;
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._openSocket(), delay);
  }

  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    if (!this.expires || !this.options.getToken) return;
    const inMs = (this.expires - this.options.refreshBefore) * 1000 - Date.now();
    this._refreshTimer = setTimeout(async () => {
      try {
        const token = await this.options.getToken();
        const r = await this._request({ op: 'auth', data: { token } });
        this.expires = r.expires ?? this.expires;
        this._scheduleRefresh();
      } catch (e) {
        this._emit('error', e);
      }
    }, Math.max(1000, Math.min(inMs, 2 ** 31 - 1)));
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit('state', state);
  }

  _emit(name, value) {
    const set = this._listeners.get(name);
    if (!set || set.size === 0) {
      // An error nobody listens for is still seen (as Node's EventEmitter
      // would, without stopping the process): a failing getToken is not silent.
      if (name === 'error') console.error('switchboard:', value);
      return;
    }
    for (const fn of set) this._call(fn, value);
  }

  _call(fn, ...args) {
    try {
      fn(...args);
    } catch (e) {
      if (fn !== this._reporting) {
        this._reporting = fn;
        queueMicrotask(() => { throw e; });
      }
    }
  }
}

/**
 * A joined chat room. Delivery is once and in order by `seq`: events that
 * arrive while the room catches up wait, and any seq seen before is skipped.
 */
export class Room {
  constructor(client, room, handler, history) {
    this.client = client;
    this.room = room;
    this.handler = handler;
    this.history = history;
    /** Highest seq delivered. */
    this.lastSeq = null;
    /** Members at the last join. */
    this.members = [];
    this._seen = new Set();
    this._seenOrder = [];
    this._catchingUp = true;
    this._buffer = [];
    this._left = false;
  }

  async join(rejoin) {
    this._catchingUp = true;
    this._buffer = [];
    try {
      const joined = await this.client.request('chat', 'join', { room: this.room }, { priority: rejoin });
      this.members = joined.members || [];
      if (this.lastSeq === null) {
        // First join: the room's recent messages, newest first in the reply.
        if (this.history > 0) {
          const page = await this.client.request('chat', 'history', { room: this.room, limit: this.history });
          const messages = (page.messages || []).slice().reverse();
          for (const m of messages) this._deliver(m, { replayed: true });
        }
        if (this.lastSeq === null) this.lastSeq = 0;
      } else {
        await this._catchUp();
      }
    } finally {
      this._catchingUp = false;
      const buffered = this._buffer.sort((a, b) => a.seq - b.seq);
      this._buffer = [];
      for (const m of buffered) this._deliver(m, {});
    }
    return this;
  }

  async _catchUp() {
    const limit = 200;
    let got = 0;
    const from = this.lastSeq;
    for (;;) {
      const page = await this.client.request('chat', 'history', { room: this.room, after: this.lastSeq, limit });
      const messages = page.messages || [];
      for (const m of messages) this._deliver(m, { caughtUp: true });
      got += messages.length;
      if (messages.length < limit) return;
      if (got >= this.client.options.maxCatchUp) {
        // Too much missed to replay: say so, and go on from the newest.
        const latest = await this.client.request('chat', 'history', { room: this.room, limit: 1 });
        const newest = latest.messages && latest.messages[0];
        this.client._emit('gap', { room: this.room, from, to: newest ? newest.seq : this.lastSeq });
        if (newest) this.lastSeq = Math.max(this.lastSeq, newest.seq);
        return;
      }
    }
  }

  event(message) {
    if (this._left || !message || typeof message.seq !== 'number') return;
    if (!this._catchingUp) return this._deliver(message, {});
    if (this._buffer.length >= MAX_BUFFERED) {
      // A catch-up slower than the room: keep the newest, say what went.
      const dropped = this._buffer.shift();
      this.client._emit('gap', { room: this.room, from: dropped.seq, to: dropped.seq });
    }
    this._buffer.push(message);
    return undefined;
  }

  _deliver(message, info) {
    if (this._seen.has(message.seq)) return;
    this._seen.add(message.seq);
    this._seenOrder.push(message.seq);
    if (this._seenOrder.length > 5000) this._seen.delete(this._seenOrder.shift());
    this.lastSeq = this.lastSeq === null ? message.seq : Math.max(this.lastSeq, message.seq);
    this.client._call(this.handler, { room: this.room, ...message }, info);
  }

  /** Leaves the room: no more messages, no catch-up. */
  async leave() {
    this._left = true;
    this.client._rooms.delete(this.room);
    if (this.client.state === 'open') {
      await this.client.request('chat', 'leave', { room: this.room }).catch(() => {});
    }
  }
}

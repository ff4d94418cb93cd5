// Types of @switchboard/bus (index.js). Checked with `tsc --strict`.

import { EventEmitter } from 'node:events';

/** The bus's error codes (docs/protocol.md); a newer peer may send others. */
export type ErrorCode =
  | 'bad_request'
  | 'too_large'
  | 'unknown_service'
  | 'unknown_op'
  | 'unavailable'
  | 'timeout'
  | 'worker_lost'
  | 'overloaded'
  | 'unauthorized'
  | 'forbidden'
  | 'internal';

export declare const CODES: readonly ErrorCode[];
/** The protocol version this package speaks ("1.3"). */
export declare const PROTOCOL: string;

/** An error with a bus code: thrown by handlers, rejected by `call`. */
export declare class BusError extends Error {
  constructor(code: ErrorCode | (string & {}), message?: string);
  readonly code: ErrorCode | (string & {});
  static badRequest(message?: string): BusError;
  static forbidden(message?: string): BusError;
  static unauthorized(message?: string): BusError;
  static unavailable(message?: string): BusError;
  static overloaded(message?: string): BusError;
  static internal(message?: string): BusError;
  static timeout(message?: string): BusError;
}

/** Where and as whom to connect; each defaults to what main gives its apps. */
export interface BusOptions {
  /** `SB_BROKER`: one endpoint, or a pair's two comma-separated. Default tcp://127.0.0.1:5555. */
  broker?: string;
  /** `SB_INSTANCE`: this process's instance name. Default `<service>-<pid>`. */
  instance?: string;
  /** `SB_SECRET`: the bus secret (HMAC key, used as given). */
  secret?: string;
  /** `SB_SUCCESSOR=1`: take over a live instance of the same name (a reload). */
  successor?: boolean;
  /** Deadline of a call that names none, ms (5000). */
  defaultTimeoutMs?: number;
  /** Where the package logs (default: stderr, debug left out). */
  log?: (level: 'debug' | 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;
}

export interface CallOptions {
  /** Relative deadline, ms. */
  timeoutMs?: number;
  /** Absolute deadline, ms since the epoch (wins over `timeoutMs`). */
  deadline?: number;
  /** Pin one instance. */
  instance?: string;
  /** Routing key: the instance that owns it. */
  key?: string;
  /** Trace id to carry (a fresh one when absent). */
  trace?: string;
  /** Safe to run twice: the broker may retry it on another instance. */
  idem?: boolean;
  /** The verified user (a gateway's, or passed on from a request). */
  user?: string;
  session?: string;
  /** Send `data` as the body unchanged (a Uint8Array) and resolve with the raw reply body. */
  raw?: boolean;
}

export interface EventInfo {
  topic: string;
}

/** A connection to the broker: a pure client (`connect`) or a service's. */
export declare class Bus extends EventEmitter {
  constructor(opts?: BusOptions & { service?: string; credit?: number });
  readonly instance: string;
  readonly service: string;
  readonly up: boolean;
  readonly stats: { malformed: number; eventsDropped: number; reconnects: number };
  start(): Promise<void>;
  waitUp(): Promise<void>;
  call<T = unknown>(service: string, op: string, data?: unknown, opts?: CallOptions): Promise<T>;
  publish(topic: string, data?: unknown): void;
  /** Resolves, once the broker holds the pattern, with a function that unsubscribes. */
  subscribe<T = unknown>(pattern: string, fn: (data: T, info: EventInfo) => void | Promise<void>): Promise<() => void>;
  /** The broker's own ops (`ls`, `stats`, …). */
  broker<T = unknown>(op: string, data?: unknown, opts?: CallOptions): Promise<T>;
  close(): Promise<void>;
}

/** What a handler gets besides its data. */
export interface Context {
  op: string;
  service: string;
  instance: string;
  /** The verified user, set by the gateway (never by a client). */
  user?: string;
  /** The client's connection, set by the gateway. */
  session?: string;
  /** The trace id, carried onto every onward call. */
  trace: string;
  /** Absolute deadline, ms since the epoch. */
  deadline: number;
  /** Aborted when the deadline passes (the caller has been answered `timeout`). */
  signal: AbortSignal;
  /** Calls another service on this request's behalf (its deadline, trace, user and session go along). */
  call<T = unknown>(service: string, op: string, data?: unknown, opts?: CallOptions): Promise<T>;
  publish(topic: string, data?: unknown): void;
  /** Subscribes the calling client to `topic` (a typed grant; the gateway applies its policy). */
  grant(topic: string): void;
  /** Unsubscribes the calling client from `topic`. */
  revoke(topic: string): void;
}

export type Handler<In = any, Out = unknown> = (data: In, ctx: Context) => Out | Promise<Out>;

export interface ServiceOptions extends BusOptions {
  /** The service name (`chat`). */
  name: string;
  /** Handlers by op, as `handle(op, fn)` would add them. */
  ops?: Record<string, Handler>;
  /** Shown by `$info`. */
  version?: string;
  /** Requests taken at once (the broker's credit for this instance): 64. */
  concurrency?: number;
  /** How long a drain waits for in-flight requests, ms: 10000. */
  graceMs?: number;
  /** `$health`'s status: "ok", or a degraded state of the service's own ("db_down"). */
  health?: () => string | Promise<string>;
  /** Exit the process once drained (SIGTERM, a reload): true. */
  exit?: boolean;
}

/** A reply's data with typed grants. */
export interface Reply<T = unknown> {
  data: T;
  grants: { subscribe: string[]; unsubscribe: string[] };
  grant(topic: string): Reply<T>;
  revoke(topic: string): Reply<T>;
}

export declare class Service {
  constructor(opts: ServiceOptions);
  readonly name: string;
  readonly instance: string;
  readonly bus: Bus;
  handle<In = any, Out = unknown>(op: string, fn: Handler<In, Out>): this;
  subscribe<T = unknown>(pattern: string, fn: (data: T, info: EventInfo) => void | Promise<void>): Promise<() => void>;
  publish(topic: string, data?: unknown): void;
  call<T = unknown>(service: string, op: string, data?: unknown, opts?: CallOptions): Promise<T>;
  /** Registers and says ready; drains on SIGTERM/SIGINT unless `signals: false`. */
  start(opts?: { signals?: boolean }): Promise<this>;
  /** Drains, finishes in-flight requests, says bye; exits unless `exit: false`. */
  stop(): Promise<void>;
}

export declare function service(opts: ServiceOptions): Service;
export declare function connect(opts?: BusOptions): Promise<Bus>;
export declare function reply<T>(data: T): Reply<T>;
export declare function newTraceId(): string;
/** Whether `topic` matches `pattern` (`*` one token, `>` the rest). */
export declare function matches(pattern: string, topic: string): boolean;

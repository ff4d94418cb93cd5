// Types for switchboard.js, Switchboard's WebSocket client.

/** The gateway's error codes, plus `disconnected` (the client's own). */
export type ErrorCode =
  | 'bad_request' | 'too_large' | 'unknown_service' | 'unknown_op' | 'unavailable'
  | 'timeout' | 'worker_lost' | 'overloaded' | 'unauthorized' | 'forbidden' | 'internal'
  | 'disconnected';

export const CODES: readonly ErrorCode[];

/** A failed request. `detail` is the gateway's message; `trace` its trace id. */
export class SwitchboardError extends Error {
  readonly code: ErrorCode;
  readonly detail: string;
  readonly trace?: string;
}

export interface Options {
  /** A token (HS256 JWT) sent as `?token=` when connecting. */
  token?: string;
  /** Called before every connect and before the token ends: a fresh token. */
  getToken?: () => string | Promise<string>;
  /** MessagePack in binary frames instead of JSON text. Default false. */
  binary?: boolean;
  /** Default request timeout, ms (from the call, queued time included). Default 5000. */
  timeout?: number;
  /** Reconnect delays: `initial * factor^attempt`, at most `max`, jittered over its upper half. */
  backoff?: { initial?: number; max?: number; factor?: number };
  /** Requests waiting for a connection at most; more fail with `overloaded`. Default 1000. */
  queueLimit?: number;
  /** Messages a joined room replays at first. Default 50. */
  history?: number;
  /** Messages a room replays after a reconnect at most; past it a `gap` event. Default 1000. */
  maxCatchUp?: number;
  /** Re-authenticate this many seconds before the token ends (with getToken). Default 60. */
  refreshBefore?: number;
  /** A WebSocket constructor, where there is no global one (the `ws` package). */
  WebSocket?: unknown;
}

export interface RequestOptions {
  /** Milliseconds from the call. */
  timeout?: number;
  /** Safe to send again after a dropped connection (idempotent, or has an idempotency key). */
  retry?: boolean;
}

export interface ChatMessage {
  room: string;
  seq: number;
  user: string;
  text: string;
  ts: number;
}

export interface DeliveryInfo {
  /** From the room's history at join. */
  replayed?: boolean;
  /** Missed while disconnected, filled in after the reconnect. */
  caughtUp?: boolean;
}

export type State = 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface ClientEvents {
  state: State;
  open: { user: string | null; reconnected: boolean };
  close: { code: number; reason: string };
  event: { topic: string; data: unknown };
  gap: { room: string; from: number; to: number };
  error: Error;
}

export class Room {
  readonly room: string;
  /** Highest seq delivered. */
  readonly lastSeq: number | null;
  /** Members at the last join. */
  readonly members: string[];
  leave(): Promise<void>;
}

export class Client {
  readonly url: string;
  readonly state: State;
  /** The user the gateway stamps on this connection's requests. */
  readonly user: string | null;
  /** When the token ends, seconds since the epoch (with auth). */
  readonly expires: number | null;
  /** Connections opened so far. */
  readonly connections: number;
  request<T = any>(to: string | null, op: string, data?: unknown, options?: RequestOptions): Promise<T>;
  ready(): Promise<Client>;
  subscribe(topic: string, handler: (data: any, topic: string) => void, options?: RequestOptions): Promise<() => Promise<void>>;
  unsubscribe(topic: string, handler?: (data: any, topic: string) => void): Promise<void>;
  joinRoom(room: string, handler: (message: ChatMessage, info: DeliveryInfo) => void, options?: { history?: number }): Promise<Room>;
  on<K extends keyof ClientEvents>(name: K, fn: (value: ClientEvents[K]) => void): () => void;
  close(): void;
}

export function connect(url: string, options?: Options): Client;
export function topicMatches(pattern: string, topic: string): boolean;

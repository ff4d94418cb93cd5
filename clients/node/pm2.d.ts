// Types of @switchboard/bus/pm2 (pm2.js): the subset of PM2's programmatic API
// it maps onto the bus. Checked with `tsc --strict`.

import { EventEmitter } from 'node:events';
import { Bus, Service } from './index';

export type Callback<T> = (err: Error | null, value?: T) => void;

export interface ProcessDescription {
  name: string;
  pm_id: number;
  pid: number;
  monit: { memory: number; cpu: number };
  pm2_env: {
    name: string;
    pm_id: number;
    /** "online" (ready), "stopping" (draining), or the broker's state. */
    status: string;
    service: string;
    instance: string;
    pm_uptime: number;
  };
}

export interface Packet<T = unknown> {
  id?: number | string;
  type?: string;
  topic: string;
  data: T;
  /** Passed on as the bus request's user (who the message is on behalf of). */
  user?: string;
  session?: string;
  timeout_ms?: number;
}

export interface BusPacket<T = unknown> {
  at: number;
  data: T;
  process: { name: string; instance: string; pm_id?: number };
}

export interface Pm2Bus extends EventEmitter {
  on(event: string, listener: (packet: BusPacket<any>) => void): this;
  close(): void;
}

export declare function connect(cb?: Callback<void>): Promise<void> | undefined;
export declare function connect(noDaemon: boolean, cb?: Callback<void>): Promise<void> | undefined;
export declare function disconnect(cb?: Callback<void>): Promise<void> | undefined;
export declare function list(cb: Callback<ProcessDescription[]>): undefined;
export declare function list(): Promise<ProcessDescription[]>;
export declare function sendDataToProcessId(id: number | string, packet: Packet, cb: Callback<{ success: boolean; data: any }>): undefined;
export declare function sendDataToProcessId(packet: Packet & { id: number | string }, cb: Callback<{ success: boolean; data: any }>): undefined;
export declare function sendDataToProcessId(id: number | string, packet: Packet): Promise<{ success: boolean; data: any }>;
export declare function launchBus(cb: Callback<Pm2Bus>): undefined;
export declare function launchBus(): Promise<Pm2Bus>;
/** The bus under the layer (null before connect). */
export declare const bus: Bus | null;
/** This process's service when main started it (SB_INSTANCE set). */
export declare const service: Service | null;
export declare const TOPIC_PREFIX: string;

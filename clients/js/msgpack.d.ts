/** Encodes a JSON-like value (plus Uint8Array and BigInt) as MessagePack. */
export function encode(value: unknown): Uint8Array;
/** Decodes one MessagePack value; throws RangeError on malformed input. */
export function decode(bytes: Uint8Array | ArrayBuffer): unknown;
export const MAX_DEPTH: number;

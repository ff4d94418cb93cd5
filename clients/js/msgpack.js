// MessagePack for the Switchboard client's binary mode: the subset JSON values
// need (nil, booleans, integers, float64, strings, arrays, maps) plus bin
// (decoded to Uint8Array) and ext (decoded to {type, data}).
//
// Written here rather than taken from @msgpack/msgpack: the client promises no
// dependencies, the frames are JSON-shaped (the gateway's side is rmp-serde with
// named fields), and this is about 200 lines, tested against the gateway in
// test/msgpack.test.js and test/client.test.js. Integers beyond 2^53 decode to
// BigInt; a BigInt encodes as int64/uint64.

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder('utf-8', { fatal: true });

/** Deepest nesting decoded or encoded: a hostile frame cannot blow the stack. */
export const MAX_DEPTH = 64;

class Writer {
  constructor() {
    this.buf = new Uint8Array(256);
    this.view = new DataView(this.buf.buffer);
    this.len = 0;
  }
  ensure(n) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(v) { this.ensure(1); this.buf[this.len++] = v; }
  u16(v) { this.ensure(2); this.view.setUint16(this.len, v); this.len += 2; }
  u32(v) { this.ensure(4); this.view.setUint32(this.len, v); this.len += 4; }
  bytes(b) { this.ensure(b.length); this.buf.set(b, this.len); this.len += b.length; }
}

function writeInt(w, v) {
  if (v >= 0) {
    if (v < 0x80) w.u8(v);
    else if (v < 0x100) { w.u8(0xcc); w.u8(v); }
    else if (v < 0x10000) { w.u8(0xcd); w.u16(v); }
    else if (v < 0x100000000) { w.u8(0xce); w.u32(v); }
    else { w.u8(0xcf); w.ensure(8); w.view.setBigUint64(w.len, BigInt(v)); w.len += 8; }
  } else if (v >= -32) w.u8(v & 0xff);
  else if (v >= -0x80) { w.u8(0xd0); w.ensure(1); w.view.setInt8(w.len, v); w.len += 1; }
  else if (v >= -0x8000) { w.u8(0xd1); w.ensure(2); w.view.setInt16(w.len, v); w.len += 2; }
  else if (v >= -0x80000000) { w.u8(0xd2); w.ensure(4); w.view.setInt32(w.len, v); w.len += 4; }
  else { w.u8(0xd3); w.ensure(8); w.view.setBigInt64(w.len, BigInt(v)); w.len += 8; }
}

function writeStr(w, s) {
  const b = textEncoder.encode(s);
  const n = b.length;
  if (n < 32) w.u8(0xa0 | n);
  else if (n < 0x100) { w.u8(0xd9); w.u8(n); }
  else if (n < 0x10000) { w.u8(0xda); w.u16(n); }
  else { w.u8(0xdb); w.u32(n); }
  w.bytes(b);
}

function writeValue(w, v, depth) {
  if (depth > MAX_DEPTH) throw new RangeError('msgpack: nested too deep');
  if (v === null || v === undefined) return w.u8(0xc0);
  switch (typeof v) {
    case 'boolean': return w.u8(v ? 0xc3 : 0xc2);
    case 'number':
      if (Number.isSafeInteger(v)) return writeInt(w, v);
      w.u8(0xcb); w.ensure(8); w.view.setFloat64(w.len, v); w.len += 8;
      return undefined;
    case 'bigint':
      if (v >= 0n) {
        if (v > 0xffffffffffffffffn) throw new RangeError('msgpack: integer over 64 bits');
        w.u8(0xcf); w.ensure(8); w.view.setBigUint64(w.len, v); w.len += 8;
      } else {
        if (v < -0x8000000000000000n) throw new RangeError('msgpack: integer over 64 bits');
        w.u8(0xd3); w.ensure(8); w.view.setBigInt64(w.len, v); w.len += 8;
      }
      return undefined;
    case 'string': return writeStr(w, v);
    default: break;
  }
  if (v instanceof Uint8Array) {
    const n = v.length;
    if (n < 0x100) { w.u8(0xc4); w.u8(n); } else if (n < 0x10000) { w.u8(0xc5); w.u16(n); } else { w.u8(0xc6); w.u32(n); }
    return w.bytes(v);
  }
  if (Array.isArray(v)) {
    const n = v.length;
    if (n < 16) w.u8(0x90 | n); else if (n < 0x10000) { w.u8(0xdc); w.u16(n); } else { w.u8(0xdd); w.u32(n); }
    for (const item of v) writeValue(w, item, depth + 1);
    return undefined;
  }
  if (typeof v.toJSON === 'function') return writeValue(w, v.toJSON(), depth + 1);
  // A plain object: like JSON.stringify, keys whose value is undefined or a
  // function are left out.
  const keys = Object.keys(v).filter((k) => v[k] !== undefined && typeof v[k] !== 'function');
  const n = keys.length;
  if (n < 16) w.u8(0x80 | n); else if (n < 0x10000) { w.u8(0xde); w.u16(n); } else { w.u8(0xdf); w.u32(n); }
  for (const k of keys) {
    writeStr(w, k);
    writeValue(w, v[k], depth + 1);
  }
  return undefined;
}

/** Encodes a JSON-like value as MessagePack. */
export function encode(value) {
  const w = new Writer();
  writeValue(w, value, 0);
  return w.buf.slice(0, w.len);
}

class Reader {
  constructor(bytes) {
    this.buf = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
    this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
    this.pos = 0;
  }
  need(n) {
    if (this.pos + n > this.buf.length) throw new RangeError('msgpack: truncated');
  }
  u8() { this.need(1); return this.buf[this.pos++]; }
  u16() { this.need(2); const v = this.view.getUint16(this.pos); this.pos += 2; return v; }
  u32() { this.need(4); const v = this.view.getUint32(this.pos); this.pos += 4; return v; }
  take(n) { this.need(n); const b = this.buf.subarray(this.pos, this.pos + n); this.pos += n; return b; }
}

function toNumber(big) {
  return big >= BigInt(Number.MIN_SAFE_INTEGER) && big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
}

function readStr(r, n) { return textDecoder.decode(r.take(n)); }

function readArray(r, n, depth) {
  // Each element takes at least a byte: a length over what is left is a lie.
  if (n > r.buf.length - r.pos) throw new RangeError('msgpack: truncated');
  const out = new Array(n);
  for (let i = 0; i < n; i++) out[i] = readValue(r, depth + 1);
  return out;
}

function readMap(r, n, depth) {
  if (n * 2 > r.buf.length - r.pos) throw new RangeError('msgpack: truncated');
  const out = {};
  for (let i = 0; i < n; i++) {
    const key = readValue(r, depth + 1);
    const k = typeof key === 'string' ? key : String(key);
    // Never let a frame set an object's prototype.
    if (k === '__proto__') { readValue(r, depth + 1); continue; }
    out[k] = readValue(r, depth + 1);
  }
  return out;
}

function readValue(r, depth) {
  if (depth > MAX_DEPTH) throw new RangeError('msgpack: nested too deep');
  const b = r.u8();
  if (b < 0x80) return b;
  if (b < 0x90) return readMap(r, b & 0x0f, depth);
  if (b < 0xa0) return readArray(r, b & 0x0f, depth);
  if (b < 0xc0) return readStr(r, b & 0x1f);
  if (b >= 0xe0) return b - 0x100;
  let v;
  switch (b) {
    case 0xc0: return null;
    case 0xc2: return false;
    case 0xc3: return true;
    case 0xc4: return r.take(r.u8()).slice();
    case 0xc5: return r.take(r.u16()).slice();
    case 0xc6: return r.take(r.u32()).slice();
    case 0xc7: { const n = r.u8(); const type = r.view.getInt8((r.need(1), r.pos++)); return { type, data: r.take(n).slice() }; }
    case 0xc8: { const n = r.u16(); const type = r.view.getInt8((r.need(1), r.pos++)); return { type, data: r.take(n).slice() }; }
    case 0xc9: { const n = r.u32(); const type = r.view.getInt8((r.need(1), r.pos++)); return { type, data: r.take(n).slice() }; }
    case 0xca: r.need(4); v = r.view.getFloat32(r.pos); r.pos += 4; return v;
    case 0xcb: r.need(8); v = r.view.getFloat64(r.pos); r.pos += 8; return v;
    case 0xcc: return r.u8();
    case 0xcd: return r.u16();
    case 0xce: return r.u32();
    case 0xcf: r.need(8); v = r.view.getBigUint64(r.pos); r.pos += 8; return toNumber(v);
    case 0xd0: r.need(1); v = r.view.getInt8(r.pos); r.pos += 1; return v;
    case 0xd1: r.need(2); v = r.view.getInt16(r.pos); r.pos += 2; return v;
    case 0xd2: r.need(4); v = r.view.getInt32(r.pos); r.pos += 4; return v;
    case 0xd3: r.need(8); v = r.view.getBigInt64(r.pos); r.pos += 8; return toNumber(v);
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: {
      const n = 1 << (b - 0xd4);
      r.need(1);
      const type = r.view.getInt8(r.pos); r.pos += 1;
      return { type, data: r.take(n).slice() };
    }
    case 0xd9: return readStr(r, r.u8());
    case 0xda: return readStr(r, r.u16());
    case 0xdb: return readStr(r, r.u32());
    case 0xdc: return readArray(r, r.u16(), depth);
    case 0xdd: return readArray(r, r.u32(), depth);
    case 0xde: return readMap(r, r.u16(), depth);
    case 0xdf: return readMap(r, r.u32(), depth);
    default: throw new RangeError(`msgpack: unknown type byte 0x${b.toString(16)}`);
  }
}

/** Decodes one MessagePack value; throws RangeError on anything malformed. */
export function decode(bytes) {
  const r = new Reader(bytes);
  const value = readValue(r, 0);
  if (r.pos !== r.buf.length) throw new RangeError('msgpack: trailing bytes');
  return value;
}

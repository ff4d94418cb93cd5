'use strict';
// The wire format of docs/protocol.md (v1.3): one MessagePack map per envelope,
// named fields, `body` as bin (itself MessagePack by convention), and the HMAC
// proofs of the registration handshake (docs/security-bus.md).

const crypto = require('node:crypto');
const { Encoder, Decoder } = require('@msgpack/msgpack');

/** Protocol 1.3: high byte major, low byte minor. */
const PROTOCOL_VERSION = 0x0103;
const PROTOCOL = '1.3';
const MAJOR = PROTOCOL_VERSION >> 8;

// `ignoreUndefined`: an absent field is left out of the map (the spec's
// defaults apply), never sent as nil.
const encoder = new Encoder({ ignoreUndefined: true });
// Integers past 2^53 would lose digits as numbers: ids and deadlines stay far
// below (ids count up from 1 per sender, deadlines are ms since the epoch).
const decoder = new Decoder();

function pack(value) {
  return encoder.encode(value);
}

function unpack(bytes) {
  return decoder.decode(bytes);
}

/** An envelope's bytes: `v` and `kind` always, the rest only when set. */
function encodeEnvelope(kind, fields = {}) {
  const env = { v: PROTOCOL_VERSION, kind };
  for (const [k, v] of Object.entries(fields)) {
    if (v === undefined || v === null || v === '' || v === 0 || v === false) continue;
    env[k] = v;
  }
  return Buffer.from(pack(env));
}

/**
 * Decodes an envelope; `null` for anything that is not a map of our major
 * version with a string `kind` (counted and dropped by the caller).
 */
function decodeEnvelope(bytes) {
  let env;
  try {
    env = unpack(bytes);
  } catch {
    return null;
  }
  if (env === null || typeof env !== 'object' || Array.isArray(env)) return null;
  if (typeof env.kind !== 'string' || typeof env.v !== 'number' || env.v >> 8 !== MAJOR) return null;
  return env;
}

/** The body (MessagePack) as a value; `undefined` for an empty body. */
function decodeBody(body) {
  if (!body || body.length === 0) return undefined;
  return unpack(body);
}

function encodeBody(value) {
  return pack(value === undefined ? {} : value);
}

function hmac(secret, parts) {
  const mac = crypto.createHmac('sha256', Buffer.from(secret, 'utf8'));
  for (const p of parts) mac.update(p);
  return mac.digest();
}

function names(service, instance) {
  return Buffer.concat([Buffer.from(service, 'utf8'), Buffer.from([0]), Buffer.from(instance, 'utf8')]);
}

/** The peer's proof: HMAC(secret, "sb-hello-v1" || nonce || service || 0 || instance). */
function helloProof(secret, nonce, service, instance) {
  return hmac(secret, [Buffer.from('sb-hello-v1'), Buffer.from(nonce), names(service, instance)]);
}

/** What the broker must answer: HMAC(secret, "sb-broker-v1" || challenge || nonce || service || 0 || instance). */
function brokerProof(secret, challenge, nonce, service, instance) {
  return hmac(secret, [Buffer.from('sb-broker-v1'), challenge, Buffer.from(nonce), names(service, instance)]);
}

function sameBytes(a, b) {
  if (!a || !b) return false;
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

/** A fresh trace id: 16 hex digits, as the Rust services make them. */
function newTraceId() {
  return crypto.randomBytes(8).toString('hex');
}

/** µs since the Unix epoch. */
function nowUs() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

/**
 * A delay setTimeout keeps: 0 to 2^31-1 ms. Node fires a longer one (or NaN)
 * after 1 ms, which would end a far deadline at once.
 */
function timerMs(ms) {
  return Number.isFinite(ms) ? Math.min(Math.max(0, ms), 2 ** 31 - 1) : 2 ** 31 - 1;
}

const NAME_RE = /^[A-Za-z0-9_.$-]{1,64}$/;

module.exports = {
  PROTOCOL_VERSION,
  PROTOCOL,
  pack,
  unpack,
  encodeEnvelope,
  decodeEnvelope,
  decodeBody,
  encodeBody,
  helloProof,
  brokerProof,
  sameBytes,
  newTraceId,
  nowUs,
  timerMs,
  NAME_RE,
};

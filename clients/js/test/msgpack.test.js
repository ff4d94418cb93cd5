// The MessagePack codec on its own: every format it writes reads back, the
// encodings are the spec's (checked byte for byte on known values), and
// malformed input is an error, never a hang or a prototype change.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encode, decode, MAX_DEPTH } from '../msgpack.js';

const hex = (b) => Buffer.from(b).toString('hex');

test('known encodings, byte for byte', () => {
  assert.equal(hex(encode(null)), 'c0');
  assert.equal(hex(encode(true)), 'c3');
  assert.equal(hex(encode(127)), '7f');
  assert.equal(hex(encode(128)), 'cc80');
  assert.equal(hex(encode(-1)), 'ff');
  assert.equal(hex(encode(-33)), 'd0df');
  assert.equal(hex(encode(65536)), 'ce00010000');
  assert.equal(hex(encode(2 ** 40)), 'cf0000010000000000');
  assert.equal(hex(encode(1.5)), 'cb3ff8000000000000');
  assert.equal(hex(encode('a')), 'a161');
  assert.equal(hex(encode([1, 2])), '920102');
  assert.equal(hex(encode({ a: 1 })), '81a16101');
});

test('round trips', () => {
  const values = [
    0, 1, -1, 255, 256, 65535, 65536, -32768, -2147483648, 2 ** 32, -(2 ** 33),
    Number.MAX_SAFE_INTEGER, Number.MIN_SAFE_INTEGER, 0.1, -1e300, Infinity,
    '', 'ünï 🚀', 'x'.repeat(31), 'x'.repeat(32), 'y'.repeat(300), 'z'.repeat(70000),
    [], new Array(20).fill(7), {}, { nested: { deep: [1, { k: 'v' }] }, n: null, t: true, f: false },
    2n ** 63n, -(2n ** 63n), new Uint8Array([1, 2, 3]),
  ];
  for (const v of values) assert.deepEqual(decode(encode(v)), v, String(v).slice(0, 40));
  const big = {};
  for (let i = 0; i < 40; i++) big[`k${i}`] = i;
  assert.deepEqual(decode(encode(big)), big);
  assert.deepEqual(decode(encode({ a: undefined, b: 1 })), { b: 1 }, 'undefined is left out, as in JSON');
});

test('malformed input is an error', () => {
  for (const bad of [[], [0xa5, 0x61], [0xdc, 0xff, 0xff], [0xdf, 0xff, 0xff, 0xff, 0xff], [0xc1], [0x01, 0x02]]) {
    assert.throws(() => decode(new Uint8Array(bad)), RangeError, hex(bad));
  }
  assert.throws(() => decode(new Uint8Array([0xa2, 0xff, 0xfe])), TypeError, 'invalid UTF-8');
  let deep = [];
  for (let i = 0; i < MAX_DEPTH + 5; i++) deep = [deep];
  assert.throws(() => encode(deep), RangeError);
  const nested = new Uint8Array(MAX_DEPTH + 5).fill(0x91);
  assert.throws(() => decode(nested), RangeError);
  assert.throws(() => encode(2n ** 64n), RangeError);
});

test('a __proto__ key cannot change the prototype', () => {
  // {"__proto__": {"polluted": true}}
  const bytes = new Uint8Array([0x81, 0xa9, ...Buffer.from('__proto__'), 0x81, 0xa8, ...Buffer.from('polluted'), 0xc3]);
  const out = decode(bytes);
  assert.equal(Object.getPrototypeOf(out), Object.prototype);
  assert.equal(out.polluted, undefined);
  assert.equal({}.polluted, undefined);
});

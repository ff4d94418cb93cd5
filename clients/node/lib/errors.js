'use strict';
// The bus's error codes (docs/protocol.md, "Error codes") as one error type.

/** Every code the protocol defines; a code outside this list is still accepted. */
const CODES = [
  'bad_request',
  'too_large',
  'unknown_service',
  'unknown_op',
  'unavailable',
  'timeout',
  'worker_lost',
  'overloaded',
  'unauthorized',
  'forbidden',
  'internal',
];

/** An error with a bus code: thrown by handlers, and by `call` for a failed reply. */
class BusError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = 'BusError';
    this.code = code;
  }

  static badRequest(message) { return new BusError('bad_request', message); }
  static forbidden(message) { return new BusError('forbidden', message); }
  static unauthorized(message) { return new BusError('unauthorized', message); }
  static unavailable(message) { return new BusError('unavailable', message); }
  static overloaded(message) { return new BusError('overloaded', message); }
  static internal(message) { return new BusError('internal', message); }
  static timeout(message) { return new BusError('timeout', message); }
}

module.exports = { BusError, CODES };

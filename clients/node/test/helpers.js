'use strict';
// A real broker for the suite: target/debug/broker (or SB_TEST_BROKER) on a
// port the OS picks, killed when the test ends.

const { spawn } = require('node:child_process');
const path = require('node:path');
const readline = require('node:readline');

const ROOT = path.resolve(__dirname, '..', '..', '..');
const BROKER = process.env.SB_TEST_BROKER || path.join(ROOT, 'target', 'debug', 'broker');
const SECRET = 'node-suite-secret';

/** Starts a broker; `bind` defaults to port 0. Resolves with {endpoint, proc, stop}. */
function startBroker({ bind = 'tcp://127.0.0.1:0', args = ['--secret', SECRET] } = {}) {
  const proc = spawn(BROKER, ['--bind', bind, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  proc.stderr.resume();
  return new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: proc.stdout });
    const timer = setTimeout(() => reject(new Error('the broker did not start')), 10000);
    proc.once('exit', (code) => reject(new Error(`the broker exited: ${code}`)));
    lines.once('line', (line) => {
      clearTimeout(timer);
      const endpoint = line.replace(/^listening /, '').trim();
      resolve({
        endpoint,
        proc,
        stop: () =>
          new Promise((r) => {
            if (proc.exitCode !== null || proc.signalCode !== null) return r();
            proc.once('exit', () => r());
            proc.kill('SIGKILL');
          }),
      });
    });
  });
}

/** Polls `check` until it returns a truthy value (10 s at most). */
async function eventually(check, ms = 10000) {
  const until = Date.now() + ms;
  let last;
  while (Date.now() < until) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`not within ${ms} ms: ${last && last.message ? last.message : JSON.stringify(last)}`);
}

const quiet = () => {};

module.exports = { startBroker, eventually, SECRET, ROOT, quiet };

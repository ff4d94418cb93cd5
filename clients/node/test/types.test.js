'use strict';
// The TypeScript declarations compile under `tsc --strict` as a service
// author uses them (test/types/usage.ts), and tsc refuses a wrong use.

const test = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const TSC = path.join(__dirname, '..', 'node_modules', '.bin', 'tsc');
const DIR = path.join(__dirname, 'types');

test('the declarations pass tsc --strict', () => {
  const out = spawnSync(TSC, ['-p', DIR], { encoding: 'utf8' });
  assert.equal(out.status, 0, out.stdout + out.stderr);
});

test('tsc refuses a handler that misuses the context', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sb-types-'));
  const config = JSON.parse(fs.readFileSync(path.join(DIR, 'tsconfig.json'), 'utf8'));
  config.compilerOptions.baseUrl = DIR;
  config.compilerOptions.typeRoots = [path.join(__dirname, '..', 'node_modules', '@types')];
  config.include = ['*.ts'];
  fs.writeFileSync(path.join(tmp, 'tsconfig.json'), JSON.stringify(config));
  fs.writeFileSync(
    path.join(tmp, 'bad.ts'),
    "import { service } from '@switchboard/bus';\nservice({ name: 'x' }).handle('y', (d, ctx) => ctx.deadline.toUpperCase());\n",
  );
  const out = spawnSync(TSC, ['-p', tmp], { encoding: 'utf8' });
  fs.rmSync(tmp, { recursive: true, force: true });
  assert.notEqual(out.status, 0, 'tsc accepted a number used as a string');
  assert.match(out.stdout, /toUpperCase/);
});

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

// Every JavaScript block this package's README publishes, checked by tsc
// --strict (checkJs) against the declarations, as a service author's editor
// would check it once pasted.
test("the README's examples pass tsc --strict", () => {
  const readme = fs.readFileSync(path.join(__dirname, '..', 'README.md'), 'utf8');
  const blocks = [...readme.matchAll(/^```(?:js|javascript|ts)\n([\s\S]*?)^```/gm)].map((m) => m[1]);
  assert.ok(blocks.length >= 3, `the README has examples (${blocks.length})`);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sb-readme-'));
  const config = JSON.parse(fs.readFileSync(path.join(DIR, 'tsconfig.json'), 'utf8'));
  config.compilerOptions.baseUrl = DIR;
  config.compilerOptions.typeRoots = [path.join(__dirname, '..', 'node_modules', '@types')];
  config.compilerOptions.allowJs = true;
  config.compilerOptions.checkJs = true;
  config.include = ['*.js'];
  fs.writeFileSync(path.join(tmp, 'tsconfig.json'), JSON.stringify(config));
  // Each block is a file of its own (a CommonJS module: one scope each).
  blocks.forEach((body, i) => fs.writeFileSync(path.join(tmp, `block${i}.js`), `${body}\nmodule.exports = {};\n`));
  const out = spawnSync(TSC, ['-p', tmp], { encoding: 'utf8' });
  fs.rmSync(tmp, { recursive: true, force: true });
  assert.equal(out.status, 0, out.stdout + out.stderr);
});

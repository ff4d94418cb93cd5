#!/usr/bin/env bash
# Installs clients/node's npm dependencies (zeromq.js, @msgpack/msgpack,
# prom-client; typescript and @types/node for the declarations' test) from its
# committed package-lock.json, with `npm ci`. Quick when they are there already.
# Prints nothing and exits 0 when npm is missing or cannot install: the Node
# suite's test (tests/e2e/node_bus.rs) then says it is skipped.
set -uo pipefail
cd "$(dirname "$0")/../clients/node" || exit 1
command -v npm >/dev/null 2>&1 || { echo "node-bus-env: npm not found; the clients/node tests are skipped" >&2; exit 0; }
# The lock file npm ci last installed from, kept beside what it installed.
stamp=node_modules/.sb-installed-lock.json
if cmp -s package-lock.json "$stamp" 2>/dev/null; then
    exit 0
fi
# zeromq.js ships its prebuilt addon inside the npm package: no download at install.
if npm ci --no-audit --no-fund --silent >&2; then
    cp package-lock.json "$stamp"
else
    echo "node-bus-env: npm ci failed in clients/node; its tests are skipped" >&2
fi
exit 0

#!/usr/bin/env bash
# Runs every check and test of the workspace, the way CI does (.ci/run calls this).
#
#   scripts/test.sh            all of it
#   scripts/test.sh -- NAME    only tests whose name contains NAME (passed to cargo test;
#                              the quick chaos run is then skipped)
#
# Builds once (debug), then runs the tests in parallel. Tests bind port 0 and
# start their own brokers and child processes; they need nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo is not installed (https://rustup.rs); rust-toolchain.toml pins the version" >&2
    exit 1
fi

# MariaDB: the services' tests use a real server. ensure-mariadb.sh finds one the
# tests can log in to (or creates a user, or runs a private server) and saves it in
# run/mariadb.env; a private server it started for this run is stopped at the end.
scripts/ensure-mariadb.sh
SB_MYSQL_STARTED=""
. run/mariadb.env
export SB_TEST_MYSQL=$SB_MYSQL
stop_db() {
    if [ -n "$SB_MYSQL_STARTED" ]; then
        kill -TERM "$SB_MYSQL_STARTED" 2>/dev/null || true
        for _ in $(seq 1 300); do kill -0 "$SB_MYSQL_STARTED" 2>/dev/null || break; sleep 0.1; done
    fi
}
trap stop_db EXIT

echo "== format"
# Workspace members only (--all would also reformat the vendored zeromq, a path
# dependency kept as upstream wrote it); the service template beside them.
cargo fmt -- --check
rustfmt --check --edition 2021 templates/service/src/main.rs

echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== build"
# The integration tests run the real binaries as child processes.
cargo build --workspace --bins --tests --locked
# The service template, a crate outside the workspace (as a user's own would be),
# built into the same target folder (it reuses the workspace's compiled crates).
CARGO_TARGET_DIR="$PWD/target" cargo build --manifest-path templates/service/Cargo.toml --locked
# A service made from it by scripts/new-service.sh, as a user would make one
# (tests/e2e/template.rs pastes the entry the script printed, as printed).
rm -rf target/new-service && mkdir -p target/new-service
CARGO_TARGET_DIR="$PWD/target" scripts/new-service.sh shouter target/new-service/shouter \
    >target/new-service/made.txt
CARGO_TARGET_DIR="$PWD/target" cargo build --manifest-path target/new-service/shouter/Cargo.toml --locked

if [ $# -eq 0 ]; then
    echo "== first run with a stock Debian MariaDB (root refused over TCP) and with none"
    scripts/test-first-run.sh
fi

echo "== test"
# The dashboard's and the demo's browser tests need Debian's chromium and chromedriver.
scripts/install-chromium.sh
# clients/js's and clients/node's suites run on Node 20+ (tests/e2e/client_js.rs
# and tests/e2e/node_bus.rs start them).
if node_version=$(node --version 2>/dev/null); then
    echo "node $node_version: clients/js and clients/node tests run"
else
    echo "node not found: the clients/js and clients/node tests (tests/e2e/client_js.rs, node_bus.rs) are skipped; install Node 20+ to run them"
fi
# clients/node's npm dependencies (zeromq.js, @msgpack/msgpack, prom-client,
# typescript) from its lock file: its suite runs from tests/e2e/node_bus.rs.
scripts/node-bus-env.sh
# The spec-only Python peer's environment (pyzmq, msgpack in target/py).
SB_TEST_PYTHON=$(scripts/python-peer-env.sh)
export SB_TEST_PYTHON
# deploy/'s and /metrics' real consumers: systemd-analyze, promtool, checkov
# (tests/e2e/deploy_run.rs).
SB_TEST_CHECKOV=$(scripts/deploy-tools.sh)
export SB_TEST_CHECKOV
cargo test --workspace --locked "$@"

# The quick chaos run (a few faults against the whole system, about a minute);
# skipped when only some tests were asked for. The full run: scripts/chaos.sh.
if [ $# -eq 0 ]; then
    echo "== chaos (quick)"
    target/debug/chaos --quick
fi

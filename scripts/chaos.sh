#!/usr/bin/env bash
# The chaos run: starts the whole system under main (its own ports, its own
# database behind a cuttable relay), drives a steady mixed WebSocket load, and
# injects faults one after another with recovery in between; prints one row per
# fault and exits 0 only when every row meets its target (crates/chaos).
#
#   scripts/chaos.sh                        the full run (about 4 minutes)
#   scripts/chaos.sh --quick                six faults (about a minute; scripts/test.sh runs it)
#   scripts/chaos.sh --markdown FILE        also write the table to FILE
#   scripts/chaos.sh --soak 600             10 minutes of client churn, RSS of every process sampled
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== build (release)"
cargo build --release --workspace --bins --locked
scripts/ensure-mariadb.sh
exec target/release/chaos "$@"

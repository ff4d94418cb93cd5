#!/usr/bin/env bash
# Sends one test packet through the bus and prints the reply's data as JSON.
#   scripts/send-packet.sh SERVICE OP [JSON] [sbctl send options…]
#   scripts/send-packet.sh echo echo '{"hello":"world"}'
# Exit status is sbctl's: 0 on success, the error code's number on failure
# (README: sbctl exit codes). SB_BROKER / SB_SECRET select the broker.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
    echo "usage: $0 SERVICE OP [JSON] [options]" >&2
    exit 64
fi
bin=target/release/sbctl
[ -x "$bin" ] || bin=target/debug/sbctl
if [ ! -x "$bin" ]; then
    cargo build --release -q -p switchboard-sbctl
    bin=target/release/sbctl
fi
exec "$bin" send "$@"

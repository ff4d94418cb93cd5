#!/usr/bin/env bash
# Sends one test packet through the bus and prints the reply's data as JSON.
#   scripts/send-packet.sh SERVICE OP [JSON] [sbctl send options…]
#   scripts/send-packet.sh chat '$echo' '{"hello":"world"}'
#   scripts/send-packet.sh echo echo '{"hello":"world"}'   (after `sbctl start echo`)
# Exit status is sbctl's: 0 on success, the error code's number on failure
# (docs/operations.md: sbctl exit codes). SB_BROKER / SB_SECRET select the broker.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/sbctl.sh
run_sbctl send "$@"

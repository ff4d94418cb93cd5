#!/usr/bin/env bash
# Sends one request as a WebSocket client through the gateway (the path a real
# client takes) and prints the reply frame (and, with --listen-ms N, the events
# that follow).
#   scripts/ws-send.sh SERVICE OP [JSON] [--token JWT] [--url ws://HOST:PORT/ws] [--listen-ms N]
#   scripts/ws-send.sh chat join '{"room":"lobby"}' --listen-ms 5000
#   scripts/ws-send.sh - ping
# SB_WS_URL and SB_TOKEN work too. Exit status as scripts/send-packet.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/sbctl.sh
run_sbctl ws-send "$@"

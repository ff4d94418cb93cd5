#!/usr/bin/env bash
# Runs the whole system on this machine until Ctrl-C: builds in release mode,
# makes sure MariaDB answers, starts the supervisor `main` with ecosystem.toml
# (broker, db, chat, loc01, loc02, receive), waits until every app is ready, and
# prints the status table and the WebSocket URL. Ctrl-C stops everything in
# reverse dependency order, gracefully.
#
# Environment:
#   SB_ECOSYSTEM   ecosystem file (default ecosystem.toml)
#   SB_PROFILE     profile for main --env (e.g. production)
#   SB_SECRET      shared bus secret (default: none; the broker binds loopback)
#   SB_AUTH_SECRET HS256 secret for client tokens (default: none, anonymous users)
# Logs: run/logs/INSTANCE.log (and run/logs/main.log).
set -euo pipefail
cd "$(dirname "$0")/.."

eco=${SB_ECOSYSTEM:-ecosystem.toml}
echo "== build (release)"
cargo build --release --workspace --bins --locked

scripts/ensure-mariadb.sh

mkdir -p run/logs
profile=()
[ -n "${SB_PROFILE:-}" ] && profile=(--env "$SB_PROFILE")
target/release/main --check --config "$eco" "${profile[@]}" >/dev/null

# main in its own session: Ctrl-C reaches only this script, which asks main to
# stop (SIGTERM); main stops the apps in order, then the broker.
setsid target/release/main --config "$eco" "${profile[@]}" >run/logs/main.out 2>run/logs/main.log &
main_pid=$!
stop() {
    trap - EXIT INT TERM
    echo
    echo "== stopping (apps in reverse dependency order, then the broker)"
    kill -TERM "$main_pid" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$main_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$main_pid" 2>/dev/null || true
    echo "stopped"
}
trap stop EXIT
trap 'exit 0' INT TERM

echo "== starting (main pid $main_pid, log run/logs/main.log)"
for _ in $(seq 1 600); do
    if grep -q '^ready' run/logs/main.out 2>/dev/null; then break; fi
    if ! kill -0 "$main_pid" 2>/dev/null; then
        echo "main exited; see run/logs/main.log" >&2
        tail -20 run/logs/main.log >&2
        exit 1
    fi
    sleep 0.1
done
broker=$(sed -n 's/^listening //p' run/logs/main.out | head -1)
export SB_BROKER=$broker
if ! grep -q '^ready' run/logs/main.out; then
    echo "not every app became ready within 60 s; see run/logs/" >&2
    target/release/sbctl ls || true
    exit 1
fi
target/release/sbctl ls
listen=$(grep -o '127.0.0.1:[0-9]*' <<<"$(grep -A4 'name = "receive"' "$eco" | grep args || true)" | head -1)
echo
echo "WebSocket: ws://${listen:-127.0.0.1:3000}/ws   (also /uws/*; GET http://${listen:-127.0.0.1:3000}/health)"
echo "Broker:    $broker"
echo "Try:       scripts/ws-send.sh chat join '{\"room\":\"lobby\"}' --listen-ms 3000"
echo "Ops:       target/release/sbctl ls | reload chat | logs loc01 -f"
echo "Ctrl-C stops everything."
while kill -0 "$main_pid" 2>/dev/null; do sleep 1; done
echo "main exited; see run/logs/main.log" >&2
exit 1

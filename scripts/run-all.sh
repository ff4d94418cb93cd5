#!/usr/bin/env bash
# Runs the whole system on this machine until Ctrl-C.
#
# broker, db (MariaDB), chat, loc01, loc02 and the WebSocket gateway receive on
# port 3000. (The supervisor `main` and ecosystem.toml take over this list in a
# later issue.) Logs go to run/logs/. Environment:
#   SB_BROKER        broker endpoint (default tcp://127.0.0.1:5555)
#   SB_SECRET        shared bus secret (default: none, loopback only)
#   SB_LISTEN        gateway address (default 127.0.0.1:3000)
#   SB_AUTH_SECRET   HS256 secret for client tokens (default: none, anonymous users)
#   DATABASE_URL     MariaDB (default mysql://root@127.0.0.1:3306/switchboard)
set -euo pipefail
cd "$(dirname "$0")/.."

export SB_BROKER=${SB_BROKER:-tcp://127.0.0.1:5555}
export SB_LISTEN=${SB_LISTEN:-127.0.0.1:3000}
export DATABASE_URL=${DATABASE_URL:-mysql://root@127.0.0.1:3306/switchboard}
scripts/ensure-mariadb.sh
echo "== build (release)"
cargo build --release --workspace --bins --locked

mkdir -p run/logs
pids=()
stop() {
    echo
    echo "== stopping"
    # Services first (they drain), then the broker.
    for ((i=${#pids[@]}-1; i>=0; i--)); do
        kill -TERM "${pids[$i]}" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "${pids[$i]}" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "${pids[$i]}" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    echo "stopped"
}
trap stop EXIT
trap 'exit 0' INT TERM

start() { # name command…
    local name=$1; shift
    # Own session: Ctrl-C reaches only this script, which stops the apps in
    # order (services drain while the broker is still up).
    setsid "$@" >"run/logs/$name.out" 2>"run/logs/$name.log" &
    pids+=($!)
    echo "started $name (pid $!), log run/logs/$name.log"
}

start broker target/release/broker --bind "$SB_BROKER" --services db,chat,loc
start db target/release/db --instance db
start chat target/release/chat --instance chat
start loc01 target/release/loc --instance loc01
start loc02 target/release/loc --instance loc02
start receive target/release/receive --instance receive --listen "$SB_LISTEN"

echo "== waiting for every instance to be ready"
ready=0
for _ in $(seq 1 100); do
    n=$(target/release/sbctl --json ls 2>/dev/null | grep -c '"state": "ready"' || true)
    if [ "${n:-0}" -ge 5 ]; then ready=1; break; fi
    sleep 0.1
done
if [ $ready -ne 1 ]; then
    echo "not every instance became ready within 10 s; see run/logs/" >&2
    exit 1
fi
target/release/sbctl ls
echo
echo "WebSocket: ws://$SB_LISTEN/ws   (also /uws/*; GET http://$SB_LISTEN/health)"
echo "broker:    $SB_BROKER   try: scripts/send-packet.sh loc '\$health'"
echo "Ctrl-C stops everything."
while true; do sleep 3600; done

#!/usr/bin/env bash
# What metrics and spans cost: the same release binaries with recording on and
# off (SB_METRICS=off SB_TRACE=off), rounds interleaved, medians printed.
#   bus request/reply: broker + echo, `sbctl bench rr` at window 1 and 256;
#   WebSocket $echo:   broker + chat + receive, `sbctl bench ws` 50 x 8.
# Needs `cargo build --release --workspace --bins`. Ports 5700-5702.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
rounds=${ROUNDS:-3}
ms=${DURATION_MS:-4000}
pids=()
stop() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap stop EXIT

start() { # start ON|OFF
    local off=()
    [ "$1" = off ] && off=(SB_METRICS=off SB_TRACE=off)
    env "${off[@]}" RUST_LOG=warn "$bin/broker" --bind tcp://127.0.0.1:5700 >/dev/null 2>&1 &
    pids+=($!)
    sleep 0.3
    env "${off[@]}" RUST_LOG=warn "$bin/echo" --broker tcp://127.0.0.1:5700 --service echo >/dev/null 2>&1 &
    pids+=($!)
    env "${off[@]}" RUST_LOG=warn "$bin/chat" --broker tcp://127.0.0.1:5700 >/dev/null 2>&1 &
    pids+=($!)
    env "${off[@]}" RUST_LOG=warn SB_RATE_PER_SEC=1000000 SB_RATE_BURST=1000000 \
        "$bin/receive" --broker tcp://127.0.0.1:5700 --listen 127.0.0.1:5702 >/dev/null 2>&1 &
    pids+=($!)
    sleep 1
}

declare -A results
for round in $(seq 1 "$rounds"); do
    for mode in on off; do
        start "$mode"
        export SB_BROKER=tcp://127.0.0.1:5700
        w1=$("$bin/sbctl" --json bench rr --window 1 --duration-ms "$ms")
        w256=$("$bin/sbctl" --json bench rr --window 256 --duration-ms "$ms")
        ws=$("$bin/sbctl" --json bench ws --url ws://127.0.0.1:5702/ws --connections 50 --window 8 --duration-ms "$ms")
        get() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d['$2'])" "$1"; }
        results[$mode,w1,$round]="$(get "$w1" rps) $(get "$w1" p50_us)"
        results[$mode,w256,$round]="$(get "$w256" rps) $(get "$w256" p50_us)"
        results[$mode,ws,$round]="$(get "$ws" rps) $(get "$ws" p99_us)"
        echo "round $round $mode: rr w1 ${results[$mode,w1,$round]} | rr w256 ${results[$mode,w256,$round]} | ws ${results[$mode,ws,$round]}" >&2
        stop
    done
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "| what | recording on | off | on / off |"
echo "|---|---|---|---|"
for k in w1 w256 ws; do
    for f in 1 2; do
        on=$(for r in $(seq 1 "$rounds"); do echo "${results[on,$k,$r]}" | cut -d' ' -f$f; done | median)
        off=$(for r in $(seq 1 "$rounds"); do echo "${results[off,$k,$r]}" | cut -d' ' -f$f; done | median)
        name=$k
        case $k,$f in
        w1,1) name="rr window 1, req/s" ;; w1,2) name="rr window 1, p50 µs" ;;
        w256,1) name="rr window 256, req/s" ;; w256,2) name="rr window 256, p50 µs" ;;
        ws,1) name="ws \$echo 50×8, msg/s" ;; ws,2) name="ws \$echo 50×8, p99 µs" ;;
        esac
        echo "| $name | $on | $off | $(python3 -c "print(f'{$on/$off:.3f}')") |"
    done
done

#!/usr/bin/env bash
# Where the time goes: `perf record` on the gateway and the broker (and the
# worker) while a benchmark runs, summarised as the top symbols by self time.
#
#   scripts/profile.sh ws  [BIN]   # receive + chat + broker under `sbctl bench ws` ($echo, 50 x 8)
#   scripts/profile.sh say [BIN]   # the same with db (MariaDB) under `--op say`
#   scripts/profile.sh rr  [BIN]   # broker + echo under `sbctl bench rr --window 256`
#
# BIN is a folder of release binaries (default target/release; for the base of
# scripts/bench-vs-base.sh, target/base-4cfaa63/target/release). The load
# generator is always this build's sbctl. Writes target/profile-MODE-NAME.txt for
# each profiled process (and .data for `perf report -i`). Needs perf (Debian's
# linux-perf) and a release build with debug info (the workspace profile has it).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-ws}
bin=${2:-target/release}
sbctl=target/release/sbctl
out=target/profile${TAG:+-$TAG}; mkdir -p "$out"
secs=${SECONDS_RECORDED:-5}
ep=tcp://127.0.0.1:5720
# One bus secret for the processes this script starts (the broker refuses to
# run without one, and a loopback bus is no reason to bench an insecure one).
export SB_SECRET=${SB_SECRET:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
pids=()
stop() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap stop EXIT

declare -A pid_of
RUST_LOG=warn "$bin/broker" --bind $ep >/dev/null 2>&1 &
pids+=($!); pid_of[broker]=$!
sleep 0.3
if [ "$mode" = say ]; then
    scripts/ensure-mariadb.sh
    . "${SB_RUN_DIR:-run}/mariadb.env"
    RUST_LOG=warn SB_BROKER=$ep DATABASE_URL="$SB_MYSQL/sb_bench_profile" "$bin/db" >/dev/null 2>&1 &
    pids+=($!); pid_of[db]=$!
fi
if [ "$mode" = ws ] || [ "$mode" = say ]; then
    RUST_LOG=warn SB_BROKER=$ep "$bin/chat" >/dev/null 2>&1 &
    pids+=($!); pid_of[chat]=$!
    RUST_LOG=warn SB_BROKER=$ep SB_RATE_PER_SEC=1000000 SB_RATE_BURST=1000000 \
        "$bin/receive" --listen 127.0.0.1:5722 >/dev/null 2>&1 &
    pids+=($!); pid_of[receive]=$!
    sleep 1
    op=('$echo'); [ "$mode" = say ] && op=(say)
    load=("$sbctl" --broker $ep bench ws --cpu --url ws://127.0.0.1:5722/ws --connections 50 --window 8 --op "${op[@]}" --duration-ms $((secs * 1000 + 2000)))
else
    RUST_LOG=warn "$bin/echo" --broker $ep --service echo >/dev/null 2>&1 &
    pids+=($!); pid_of[echo]=$!
    sleep 1
    load=("$sbctl" --broker $ep bench rr --cpu --window 256 --duration-ms $((secs * 1000 + 2000)))
fi
"${load[@]}" >"$out/$mode-load.txt" 2>&1 &
load_pid=$!
sleep 1.5
recs=()
for name in "${!pid_of[@]}"; do
    perf record -F 999 -g --call-graph dwarf,8192 -o "$out/$mode-$name.data" \
        -p "${pid_of[$name]}" -- sleep "$secs" >/dev/null 2>&1 &
    recs+=($!)
done
wait "${recs[@]}" || true
wait "$load_pid" || true
cat "$out/$mode-load.txt"
for name in "${!pid_of[@]}"; do
    f=$out/$mode-$name
    {
        samples=$(perf report -i "$f.data" --stdio 2>/dev/null | grep -m1 '^# Samples' || true)
        echo "# $name under $mode ($bin), $secs s at 999 Hz ($samples: 1K a second is one core); self time, top symbols"
        perf report -i "$f.data" --no-children --sort symbol --percent-limit 1 --stdio -g none 2>/dev/null |
            grep -v '^#' | grep -v '^$' | sed 's/ *- *- *$//' | head -40
    } >"$f.txt"
    echo "== $f.txt"
    head -25 "$f.txt"
done

#!/usr/bin/env bash
# Every performance row against a base build and NATS, in one run, rounds
# interleaved (base, this build, this build with recording off, NATS):
#   WS `$echo`  receive -> chat -> receive, 50 connections x 8 in flight
#   WS `say`    receive -> chat -> db (committed to MariaDB) -> receive, 50 x 8
#   bus rr      sbctl -> broker -> echo, 100 B, 256 and 1 in flight (and NATS, the
#               bench/ harness's responder and requester on 127.0.0.1:4222)
#   idle        bytes per idle WebSocket connection (`sbctl bench idle`)
#   system idle RSS of main and every app of ecosystem.toml, a few seconds after ready
# Every load row runs with `--cpu`: each process's CPU per request (MariaDB's
# too, for `say`). The same load generator (this build's sbctl) drives every
# build. "off" is this build with SB_METRICS=off SB_TRACE=off.
#
#   scripts/bench-vs-base.sh                 # base: 5f0b460 (issue 24's "today's main")
#   BASE=<rev> ROUNDS=5 DURATION_MS=5000 scripts/bench-vs-base.sh
#
# The base is built once in a worktree under target/base-<rev> (its own target
# folder; several minutes the first time), or taken from BASE_BIN (a folder of
# its release binaries). Needs `cargo build --release --workspace --bins` for this
# build, bench/'s `compare` (`cd bench && cargo build --release`), nats-server on
# 127.0.0.1:4222 (NATS=… to change, NATS=none to skip) and a MariaDB
# (scripts/ensure-mariadb.sh finds one); each round uses a database of its own,
# dropped at the end. Ports 5710-5715. Raw JSON of every run in target/bench-vs-base/.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD
base=${BASE:-5f0b460}
rounds=${ROUNDS:-3}
ms=${DURATION_MS:-5000}
idle_conns=${IDLE_CONNECTIONS:-5000}
nats=${NATS:-nats://127.0.0.1:4222}
new_bin=$here/target/release
compare=$here/bench/target/release/compare
out=$here/target/bench-vs-base
rm -rf "$out"
mkdir -p "$out"
if [ -n "${BASE_BIN:-}" ]; then
    base_bin=$BASE_BIN
else
    base_dir=$here/target/base-$base
    if [ ! -x "$base_dir/target/release/receive" ]; then
        [ -d "$base_dir" ] || git worktree add -f --detach "$base_dir" "$base" >&2
        (cd "$base_dir" && cargo build --release --workspace --bins >&2)
    fi
    base_bin=$base_dir/target/release
fi
if [ "$nats" != none ] && [ ! -x "$compare" ]; then
    (cd bench && cargo build --release >&2)
fi
scripts/ensure-mariadb.sh >&2
. "${SB_RUN_DIR:-run}/mariadb.env"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# One bus secret for the processes this script starts (the broker refuses to
# run without one, and a loopback bus is no reason to bench an insecure one).
export SB_SECRET=${SB_SECRET:-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
pids=()
stop() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap stop EXIT
ep=tcp://127.0.0.1:5710
url=ws://127.0.0.1:5712/ws
sbctl=("$new_bin/sbctl" --broker $ep --json)

start() { # start BIN DBNAME [ENV=VALUE…]
    local bin=$1 db=$2
    shift 2
    env "$@" RUST_LOG=warn "$bin/broker" --bind $ep >/dev/null 2>&1 &
    pids+=($!)
    sleep 0.3
    env "$@" RUST_LOG=warn SB_BROKER=$ep DATABASE_URL="$SB_MYSQL/$db" "$bin/db" >/dev/null 2>&1 &
    pids+=($!)
    env "$@" RUST_LOG=warn SB_BROKER=$ep "$bin/chat" >/dev/null 2>&1 &
    pids+=($!)
    env "$@" RUST_LOG=warn "$bin/echo" --broker $ep --service echo --instance bench-echo >/dev/null 2>&1 &
    pids+=($!)
    env "$@" RUST_LOG=warn SB_BROKER=$ep SB_RATE_PER_SEC=1000000 SB_RATE_BURST=1000000 \
        SB_MAX_CONNECTIONS_PER_IP=60000 SB_MAX_INFLIGHT_PER_IP=100000 \
        "$bin/receive" --listen 127.0.0.1:5712 >/dev/null 2>&1 &
    pids+=($!)
    local up=no
    for _ in $(seq 1 100); do
        "${sbctl[@]}" call db '$health' >/dev/null 2>&1 &&
            "${sbctl[@]}" call chat '$health' >/dev/null 2>&1 &&
            "${sbctl[@]}" call echo '$health' >/dev/null 2>&1 &&
            curl -fs http://127.0.0.1:5712/health >/dev/null 2>&1 && { up=yes; break; }
        sleep 0.1
    done
    # A benchmark of a system that never came up measures nothing.
    [ $up = yes ] || { echo "bench-vs-base: $bin's system not ready in 10 s" >&2; exit 1; }
}

run() { # run NAME COMMAND…: one JSON report into $out/NAME.json
    local name=$1
    shift
    "$@" >"$out/$name.json" 2>"$out/$name.err" || echo '{"rps":0,"p50_us":0,"p99_us":0,"errors":-1}' >"$out/$name.json"
}

dbs=()
for round in $(seq 1 "$rounds"); do
    for which in base new off; do
        bin=$new_bin
        [ $which = base ] && bin=$base_bin
        vars=(SB_X=1)
        [ $which = off ] && vars=(SB_METRICS=off SB_TRACE=off)
        db=sb_bench_$$_${which}_$round
        dbs+=("$db")
        start "$bin" "$db" "${vars[@]}"
        run "$which-echo-$round" "${sbctl[@]}" bench ws --url $url --cpu --duration-ms "$ms"
        run "$which-say-$round" "${sbctl[@]}" bench say --url $url --cpu --duration-ms "$ms"
        run "$which-rr256-$round" "${sbctl[@]}" bench rr --service echo --size 100 --window 256 --cpu --duration-ms "$ms"
        run "$which-rr1-$round" "${sbctl[@]}" bench rr --service echo --size 100 --window 1 --cpu --duration-ms "$ms"
        if [ "$which" != off ] && [ "$round" = 1 ]; then
            run "$which-idle-$round" "${sbctl[@]}" bench idle --url $url --connections "$idle_conns" --hold-ms 2000 --sources 4
        fi
        stop
        echo "round $round $which done" >&2
    done
    if [ "$nats" != none ]; then
        "$compare" responder --url "$nats" >/dev/null 2>&1 &
        pids+=($!)
        sleep 0.5
        run "nats-rr256-$round" "$compare" nats-rr --url "$nats" --size 100 --window 256 --duration-ms "$ms"
        run "nats-rr1-$round" "$compare" nats-rr --url "$nats" --size 100 --window 1 --duration-ms "$ms"
        stop
        echo "round $round nats done" >&2
    fi
done

# The whole system idle: main with ecosystem.toml (its ports moved), RSS of every
# process once all are ready and a few seconds have passed.
system_idle() { # system_idle BIN NAME
    local bin=$1 name=$2 dir=$out/system-$2
    mkdir -p "$dir"
    sed -e 's#tcp://127.0.0.1:5555#tcp://127.0.0.1:5713#' -e 's#127.0.0.1:3000#127.0.0.1:5714#' \
        -e "s#^run_dir = .*#run_dir = \"$dir\"\nhttp = \"127.0.0.1:5715\"#" ecosystem.toml >"$dir/ecosystem.toml"
    DATABASE_URL="$SB_MYSQL/sb_bench_$$_system" SB_BROKER=tcp://127.0.0.1:5713 \
        setsid "$bin/main" --config "$dir/ecosystem.toml" >"$dir/main.out" 2>"$dir/main.log" &
    local main=$!
    pids+=($main)
    grep_ready() { grep -q '^ready' "$dir/main.out" 2>/dev/null; }
    for _ in $(seq 1 300); do grep_ready && break; sleep 0.1; done
    grep_ready || { echo "bench-vs-base: main ($1) not ready in 30 s" >&2; exit 1; }
    sleep 5
    local kib=0 list=""
    for p in $main $(pgrep -P $main); do
        local r
        r=$(ps -o rss= -p "$p" 2>/dev/null | tr -d ' ')
        [ -n "$r" ] || continue
        kib=$((kib + r))
        list="$list $(ps -o comm= -p "$p")=$r"
    done
    echo "{\"kib\":$kib,\"processes\":\"${list# }\"}" >"$out/system-$name.json"
    stop
}
dbs+=("sb_bench_$$_system")
system_idle "$base_bin" base
system_idle "$new_bin" new

client=$(command -v mariadb || command -v mysql)
for db in "${dbs[@]}"; do
    u=${SB_MYSQL#mysql://}; creds=${u%@*}; hostport=${u#*@}
    user=${creds%%:*}; pass=${creds#*:}; [ "$pass" = "$creds" ] && pass=
    MYSQL_PWD=$pass "$client" -h "${hostport%:*}" -P "${hostport#*:}" -u "$user" -e "DROP DATABASE IF EXISTS \`$db\`" 2>/dev/null || true
done

python3 scripts/lib/bench_table.py "$out" "$rounds" "$base"

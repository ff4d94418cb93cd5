#!/usr/bin/env bash
# The WebSocket path against a base build, in one run (issue 15's first two rows):
#   $echo  receive -> chat -> receive, 50 connections x 8 in flight
#   say    receive -> chat -> db (committed to MariaDB) -> receive, 50 x 8
# Each round starts broker + db + chat + receive from the base build, measures,
# stops it, then does the same with this build; medians of the rounds, and
# the ratio this / base. The same load generator (this build's sbctl) drives both.
#
#   scripts/bench-vs-base.sh                 # base: 4cfaa63 (issue 15's "current main")
#   BASE=<rev> ROUNDS=5 DURATION_MS=5000 scripts/bench-vs-base.sh
#
# The base is built once in a worktree under target/base-<rev> (its own target
# folder; a few minutes the first time). Needs `cargo build --release --workspace
# --bins` for this build, and a MariaDB (scripts/ensure-mariadb.sh finds one);
# each round uses a database of its own, dropped at the end. Ports 5710-5712.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD
base=${BASE:-4cfaa63}
rounds=${ROUNDS:-3}
ms=${DURATION_MS:-5000}
new_bin=$here/target/release
base_dir=$here/target/base-$base
if [ ! -x "$base_dir/target/release/receive" ]; then
    [ -d "$base_dir" ] || git worktree add -f --detach "$base_dir" "$base" >&2
    (cd "$base_dir" && cargo build --release --workspace --bins >&2)
fi
base_bin=$base_dir/target/release
scripts/ensure-mariadb.sh
. "${SB_RUN_DIR:-run}/mariadb.env"

pids=()
stop() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap stop EXIT
ep=tcp://127.0.0.1:5710
url=ws://127.0.0.1:5712/ws

start() { # start BIN DBNAME
    local bin=$1
    RUST_LOG=warn "$bin/broker" --bind $ep >/dev/null 2>&1 &
    pids+=($!)
    sleep 0.3
    RUST_LOG=warn SB_BROKER=$ep DATABASE_URL="$SB_MYSQL/$2" "$bin/db" >/dev/null 2>&1 &
    pids+=($!)
    RUST_LOG=warn SB_BROKER=$ep "$bin/chat" >/dev/null 2>&1 &
    pids+=($!)
    RUST_LOG=warn SB_BROKER=$ep SB_RATE_PER_SEC=1000000 SB_RATE_BURST=1000000 \
        "$bin/receive" --listen 127.0.0.1:5712 >/dev/null 2>&1 &
    pids+=($!)
    for _ in $(seq 1 100); do
        SB_BROKER=$ep "$new_bin/sbctl" call db '$health' >/dev/null 2>&1 &&
            SB_BROKER=$ep "$new_bin/sbctl" call chat '$health' >/dev/null 2>&1 && break
        sleep 0.1
    done
}

get() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); print(d['$2'])" "$1"; }
declare -A r
dbs=()
for round in $(seq 1 "$rounds"); do
    for which in base new; do
        bin=$new_bin
        [ $which = base ] && bin=$base_bin
        db=sb_bench_$$_${which}_$round
        dbs+=("$db")
        start "$bin" "$db"
        echo_=$("$new_bin/sbctl" --broker $ep --json bench ws --url $url --connections 50 --window 8 --duration-ms "$ms")
        say=$("$new_bin/sbctl" --broker $ep --json bench ws --url $url --connections 50 --window 8 --duration-ms "$ms" --op say)
        r[$which,echo,$round]="$(get "$echo_" rps) $(get "$echo_" p99_us) $(get "$echo_" errors)"
        r[$which,say,$round]="$(get "$say" rps) $(get "$say" p99_us) $(get "$say" errors)"
        echo "round $round $which: \$echo ${r[$which,echo,$round]} | say ${r[$which,say,$round]}  (msg/s p99_us errors)" >&2
        stop
    done
done
client=$(command -v mariadb || command -v mysql)
for db in "${dbs[@]}"; do
    u=${SB_MYSQL#mysql://}; creds=${u%@*}; hostport=${u#*@}
    user=${creds%%:*}; pass=${creds#*:}; [ "$pass" = "$creds" ] && pass=
    MYSQL_PWD=$pass "$client" -h "${hostport%:*}" -P "${hostport#*:}" -u "$user" -e "DROP DATABASE IF EXISTS \`$db\`" 2>/dev/null || true
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { for x in $(seq 1 "$rounds"); do echo "${r[$1,$2,$x]}" | cut -d' ' -f"$3"; done | median; }
echo "| what | base ($base) msg/s | this build msg/s | ratio | base p99 µs | this p99 µs | errors (base / this, all rounds) |"
echo "|---|---|---|---|---|---|---|"
for k in echo say; do
    b=$(col base $k 1); n=$(col new $k 1)
    be=$(for x in $(seq 1 "$rounds"); do echo "${r[base,$k,$x]}" | cut -d' ' -f3; done | paste -sd+ | bc)
    ne=$(for x in $(seq 1 "$rounds"); do echo "${r[new,$k,$x]}" | cut -d' ' -f3; done | paste -sd+ | bc)
    name='WS `$echo` 50 × 8'; [ $k = say ] && name='WS `say` 50 × 8 (MariaDB)'
    echo "| $name | ${b%.*} | ${n%.*} | **$(python3 -c "print(f'{$n/$b:.2f}x')")** | $(col base $k 2) | $(col new $k 2) | $be / $ne |"
done

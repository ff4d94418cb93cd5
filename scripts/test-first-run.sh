#!/usr/bin/env bash
# The first run as a new user meets it, on this machine, with the debug build:
#   1. a stock Debian/Ubuntu MariaDB: root is let in only through the Unix socket
#      (unix_socket authentication), so mysql://root@127.0.0.1 is refused;
#   2. no MariaDB server running at all (a private one must be started, and
#      stopped again when run-all.sh stops).
# Each case starts its own MariaDB server or none, on free ports, and runs
# scripts/run-all.sh against it; a `say` through the gateway must be committed to
# that server. Run by scripts/test.sh after the build; needs root (as CI runs),
# else it says it is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)
bin="$here/target/debug"

if [ "$(id -u)" != 0 ]; then
    echo "first run: skipped (needs root to run MariaDB servers of its own as CI does)"
    exit 0
fi
server=$(command -v mariadbd || command -v mysqld || echo /usr/sbin/mariadbd)
install_db=$(command -v mariadb-install-db || command -v mysql_install_db)
work=$(mktemp -d /tmp/sb-first-run.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    done
    rm -rf "$work"
}
trap cleanup EXIT

fail() {
    echo "first run: FAILED: $*" >&2
    exit 1
}

free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 30000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
}

# run_system NAME [VAR=VALUE…]: run-all.sh with its own ecosystem, ports and run
# folder; a say through the gateway; Ctrl-C; sets $run for the caller.
run_system() {
    local name=$1
    shift
    run="$work/$name"
    mkdir -p "$run"
    local ws_port broker_port
    ws_port=$(free_port)
    broker_port=$(free_port)
    sed -e "s|^run_dir = \"run\"|run_dir = \"$run\"|" \
        -e "s|tcp://127.0.0.1:5555|tcp://127.0.0.1:$broker_port|" \
        -e "s|127.0.0.1:3000|127.0.0.1:$ws_port|" ecosystem.toml >"$run/ecosystem.toml"
    env -u DATABASE_URL -u SB_MYSQL -u SB_TEST_MYSQL "$@" SB_BIN_DIR="$bin" \
        SB_ECOSYSTEM="$run/ecosystem.toml" SB_RUN_DIR="$run" \
        setsid scripts/run-all.sh >"$run/run-all.out" 2>&1 &
    local all=$!
    pids+=("$all")
    for _ in $(seq 1 600); do
        grep -q "Ctrl-C stops everything" "$run/run-all.out" && break
        kill -0 "$all" 2>/dev/null || { cat "$run/run-all.out" >&2; fail "$name: run-all.sh exited"; }
        sleep 0.1
    done
    grep -q "Ctrl-C stops everything" "$run/run-all.out" || {
        cat "$run/run-all.out" >&2
        fail "$name: the system did not come up within 60 s"
    }
    local reply auth=() token
    # With SB_AUTH=1 the secret is kept in the run folder: sbctl token in another
    # shell (no SB_AUTH_SECRET) signs with it, and an anonymous client is refused.
    if printf '%s\n' "$@" | grep -qx 'SB_AUTH=1'; then
        token=$(env -u SB_AUTH_SECRET SB_RUN_DIR="$run" "$bin/sbctl" token --sub firstrun 2>&1) ||
            fail "$name: sbctl token did not find the saved secret: $token"
        auth=(--token "$token")
        if reply=$("$bin/sbctl" ws-send chat say '{"room":"firstrun","text":"anonymous"}' \
            --url "ws://127.0.0.1:$ws_port/ws" 2>&1); then
            fail "$name: auth is on, yet an anonymous say was taken: $reply"
        fi
    fi
    reply=$("$bin/sbctl" ws-send chat say '{"room":"firstrun","text":"hello from a first run"}' \
        --url "ws://127.0.0.1:$ws_port/ws" "${auth[@]}" 2>&1) || fail "$name: say failed: $reply"
    # A second start on the same run folder (a command pasted into another
    # terminal) refuses and touches nothing of the first: not its log, not its
    # processes, not its clients.
    local log_before second
    log_before=$(wc -c <"$run/logs/main.log")
    if second=$(env -u DATABASE_URL -u SB_MYSQL -u SB_TEST_MYSQL "$@" SB_BIN_DIR="$bin" \
        SB_ECOSYSTEM="$run/ecosystem.toml" SB_RUN_DIR="$run" timeout 60 scripts/run-all.sh 2>&1); then
        fail "$name: a second run-all.sh on the same run folder started: $second"
    fi
    grep -q "a system already runs from $run" <<<"$second" || fail "$name: the second start said: $second"
    [ "$(wc -c <"$run/logs/main.log")" -ge "$log_before" ] || fail "$name: the second start wiped main.log"
    reply=$("$bin/sbctl" ws-send chat say '{"room":"firstrun2","text":"still here"}' \
        --url "ws://127.0.0.1:$ws_port/ws" "${auth[@]}" 2>&1) || fail "$name: after a second start, a say failed: $reply"
    # The message is in that server, read back with the credentials run-all.sh used.
    local url user pass hostport count
    url=$(sed -n "s/^SB_MYSQL='\(.*\)'$/\1/p" "$run/mariadb.env")
    url=${url#mysql://}
    user=${url%%:*}
    pass=${url#*:}
    pass=${pass%@*}
    hostport=${url##*@}
    count=$(MYSQL_PWD="$pass" mariadb --protocol=tcp -h "${hostport%:*}" -P "${hostport##*:}" \
        -u "$user" -N -e "SELECT COUNT(*) FROM switchboard.messages WHERE room = 'firstrun'")
    [ "$count" = 1 ] || fail "$name: expected the say in switchboard.messages, found $count rows"
    if [ "${#auth[@]}" -gt 0 ]; then
        # sbctl shutdown: main stops everything; run-all.sh ends as a clean stop
        # (exit 0), not as a crash.
        SB_RUN_DIR="$run" "$bin/sbctl" --broker "tcp://127.0.0.1:$broker_port" shutdown >/dev/null ||
            fail "$name: sbctl shutdown failed"
        local status=0
        timeout 40 tail --pid="$all" -f /dev/null || fail "$name: run-all.sh did not end within 40 s of sbctl shutdown"
        wait "$all" || status=$?
        [ "$status" = 0 ] || fail "$name: after sbctl shutdown run-all.sh exited $status: $(tail -5 "$run/run-all.out")"
        grep -q "main stopped every app" "$run/run-all.out" ||
            fail "$name: run-all.sh did not say main stopped: $(tail -5 "$run/run-all.out")"
    else
        # SIGTERM: a background job of a script ignores SIGINT (Ctrl-C at a terminal
        # reaches the foreground run-all.sh as SIGINT, handled the same way).
        kill -TERM "$all"
        for _ in $(seq 1 400); do kill -0 "$all" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$all" 2>/dev/null && fail "$name: run-all.sh did not stop within 40 s after SIGTERM"
    fi
    echo "first run ($name): up, a say committed as $user, stopped"
}

# --- 1. stock Debian: root only through the socket --------------------------
db_port=$(free_port)
data="$work/stock-data"
"$install_db" --no-defaults --datadir="$data" --user=root \
    --auth-root-authentication-method=socket >"$work/stock-install.log" 2>&1 ||
    fail "mariadb-install-db: $(tail -3 "$work/stock-install.log")"
"$server" --no-defaults --datadir="$data" --port="$db_port" --bind-address=127.0.0.1 \
    --socket="$work/stock.sock" --pid-file="$work/stock.pid" --user=root \
    >"$work/stock-server.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 100); do [ -S "$work/stock.sock" ] && break; sleep 0.1; done
[ -S "$work/stock.sock" ] || fail "the stock server did not start: $(tail -3 "$work/stock-server.log")"
# The case is the real one: root over TCP is refused.
if mariadb --protocol=tcp -h 127.0.0.1 -P "$db_port" -uroot -e 'SELECT 1' >/dev/null 2>&1; then
    fail "the stock server let root in over TCP; the case is not simulated"
fi
run_system stock SB_AUTH=1 SB_DB_PORT="$db_port" SB_DB_SOCKET="$work/stock.sock"
grep -q "created the user switchboard" "$run/run-all.out" ||
    fail "stock: ensure-mariadb.sh did not say it created the user: $(cat "$run/run-all.out")"

# --- 2. no server at all: a private one, stopped with run-all.sh ------------
private_port=$(free_port)
run_system none SB_DB_PORT="$(free_port)" SB_DB_SOCKET="$work/none.sock" \
    SB_PRIVATE_DB_PORT="$private_port"
grep -q "private server up" "$run/run-all.out" ||
    fail "none: no private server was started: $(cat "$run/run-all.out")"
grep -q "stopping the private MariaDB" "$run/run-all.out" ||
    fail "none: run-all.sh did not stop the private server: $(cat "$run/run-all.out")"
if (exec 3<>"/dev/tcp/127.0.0.1/$private_port") 2>/dev/null; then
    fail "none: the private server still answers on $private_port after run-all.sh stopped"
fi
echo "first run: 2 cases passed"

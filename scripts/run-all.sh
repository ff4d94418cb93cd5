#!/usr/bin/env bash
# Runs the whole system on this machine until Ctrl-C: builds (release by default),
# makes sure there is a MariaDB it can use (scripts/ensure-mariadb.sh), starts the
# supervisor `main` with ecosystem.toml (broker, db, chat, loc01, loc02, receive),
# shows each app as it starts, and prints the status table and the WebSocket URL
# once every app is ready. If an app cannot start, it says which and why; if the
# gateway cannot start nothing can serve, and it stops everything and exits 1.
# Ctrl-C stops everything in reverse dependency order, gracefully (and a private
# MariaDB this run started).
#
# Environment:
#   SB_ECOSYSTEM   ecosystem file (default ecosystem.toml)
#   SB_BUILD       release (default), debug, or none (use what target/ holds)
#   SB_BIN_DIR     use the binaries in this folder, build nothing (the tests)
#   SB_RUN_DIR     where main.out, main.log and mariadb.env go (default run)
#   DATABASE_URL   MariaDB to use; if it does not work, scripts/ensure-mariadb.sh
#                  finds or makes one (see there) and the db app uses that
#   SB_PROFILE     profile for main --env (e.g. production)
#   SB_SECRET      shared bus secret (default: run/bus.secret, made on the first
#                  run, mode 600; sbctl finds it there)
#   SB_AUTH       1: client tokens on, with the secret kept in run/auth.secret
#                  (made on the first such run, mode 600; sbctl token finds it)
#   SB_AUTH_SECRET HS256 secret for client tokens (default: none, anonymous users);
#                  kept in run/auth.secret too, for sbctl token
# Logs: run/logs/INSTANCE.log (and run/logs/main.log).
set -euo pipefail
cd "$(dirname "$0")/.."

eco=${SB_ECOSYSTEM:-ecosystem.toml}
# A run folder given here is main's too (its [main] run_dir is overridden), so
# that this script and main look for the lock, the secret and the logs in one place.
if [ -n "${SB_RUN_DIR:-}" ]; then
    mkdir -p "$SB_RUN_DIR"
    SB_ECO__MAIN__RUN_DIR=$(cd "$SB_RUN_DIR" && pwd)
    export SB_ECO__MAIN__RUN_DIR
fi
export SB_RUN_DIR=${SB_RUN_DIR:-run}
run=$SB_RUN_DIR
build=${SB_BUILD:-release}

# One system per run folder: a main that runs already holds the lock on
# $run/main.lock (flock, released by the kernel when it exits). Refuse before
# touching anything of it: its logs, its processes, its ports.
if [ -e "$run/main.lock" ] && command -v flock >/dev/null && ! flock -n "$run/main.lock" true 2>/dev/null; then
    echo "run-all.sh: a system already runs from $run (main pid $(cat "$run/main.lock" 2>/dev/null || echo '?'))." >&2
    echo "  See it:   sbctl ls" >&2
    echo "  Stop it:  sbctl shutdown   (or Ctrl-C in its terminal)" >&2
    echo "  Or run a second one beside it: SB_RUN_DIR=run2 and an ecosystem file with other ports" >&2
    exit 1
fi

# Client tokens: the secret the gateway runs with is kept in $run/auth.secret
# (mode 600), so that `sbctl token` in another terminal signs with it; SB_AUTH=1
# makes one on the first run and keeps it across restarts (tokens stay valid).
# The file is held to main's rule for bus.secret, before anything starts: a
# regular file of this user's, closed to others. Never a symlink (written
# through, it would overwrite and chmod its target) nor a file another user
# made (its secret would be theirs, and so would every token).
auth_file="$run/auth.secret"
if [ -n "${SB_AUTH_SECRET:-}" ] || [ "${SB_AUTH:-0}" = 1 ]; then
    # A run folder another user owns is theirs to swap files in.
    if [ -d "$run" ] && [ ! -O "$run" ]; then
        echo "run-all.sh: $run belongs to another user: its auth.secret would be theirs to choose" >&2
        exit 1
    fi
    if [ -L "$auth_file" ] || { [ -e "$auth_file" ] && { [ ! -f "$auth_file" ] ||
        [ ! -O "$auth_file" ] || [ -n "$(find "$auth_file" -maxdepth 0 -perm /077)" ]; }; }; then
        echo "run-all.sh: $auth_file is not a secret of this user's (a symlink, another" >&2
        echo "  user's file, or open to others): delete it to have a new one made" >&2
        exit 1
    fi
    if [ -n "${SB_AUTH_SECRET:-}" ] || [ ! -s "$auth_file" ]; then
        mkdir -p "$run"
        # mktemp: a new file of mode 600; mv replaces the name, never follows it.
        tmp=$(mktemp "$run/.auth.secret.XXXXXX")
        if [ -n "${SB_AUTH_SECRET:-}" ]; then
            printf '%s\n' "$SB_AUTH_SECRET" >"$tmp"
        else
            { od -An -tx1 -N32 /dev/urandom | tr -d ' \n' && echo; } >"$tmp"
        fi
        mv -f "$tmp" "$auth_file"
    fi
    if [ -z "${SB_AUTH_SECRET:-}" ]; then
        # Read from the file judged, not from its name again: opened once and
        # checked through the open descriptor, so a file swapped in after the
        # checks above (by whoever may write to the run folder) is not read.
        exec 3<"$auth_file"
        read -r owner mode kind <<<"$(stat -L -c '%u %a %F' /dev/fd/3)"
        if [ "$owner" != "$(id -u)" ] || [ $((8#$mode & 8#077)) -ne 0 ] || [ "$kind" != "regular file" ]; then
            echo "run-all.sh: $auth_file changed under us (not a secret of this user's): delete it" >&2
            exit 1
        fi
        SB_AUTH_SECRET=$(cat <&3)
        exec 3<&-
        export SB_AUTH_SECRET
    fi
fi

[ -n "${SB_BIN_DIR:-}" ] && build=given
case $build in
given) bin=$SB_BIN_DIR ;;
release)
    bin=target/release
    echo "== build (release; the first build takes about ten minutes on two cores, later ones seconds)"
    cargo build --release --workspace --bins --locked
    ;;
debug)
    bin=target/debug
    echo "== build (debug)"
    cargo build --workspace --bins --locked
    ;;
none)
    bin=target/release
    [ -x "$bin/main" ] || bin=target/debug
    ;;
*)
    echo "SB_BUILD must be release, debug or none" >&2
    exit 64
    ;;
esac

main_pid=""
SB_MYSQL_STARTED=""
stop() {
    trap - EXIT INT TERM
    echo
    if [ -n "$main_pid" ]; then
        echo "== stopping (apps in reverse dependency order, then the broker)"
        kill -TERM "$main_pid" 2>/dev/null || true
        for _ in $(seq 1 300); do kill -0 "$main_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$main_pid" 2>/dev/null || true
    fi
    if [ -n "$SB_MYSQL_STARTED" ]; then
        echo "== stopping the private MariaDB this run started (pid $SB_MYSQL_STARTED)"
        kill -TERM "$SB_MYSQL_STARTED" 2>/dev/null || true
        for _ in $(seq 1 300); do kill -0 "$SB_MYSQL_STARTED" 2>/dev/null || break; sleep 0.1; done
    fi
    echo "stopped"
}
trap stop EXIT
trap 'exit 0' INT TERM

echo "== database"
db_name=switchboard
if [ -n "${DATABASE_URL:-}" ]; then
    db_name=${DATABASE_URL##*/}
    db_name=${db_name%%\?*}
fi
scripts/ensure-mariadb.sh
. "$run/mariadb.env"
export DATABASE_URL="$SB_MYSQL/$db_name"

mkdir -p "$run/logs"

profile=()
[ -n "${SB_PROFILE:-}" ] && profile=(--env "$SB_PROFILE")
"$bin/main" --check --config "$eco" "${profile[@]}" >/dev/null

# main in its own session: Ctrl-C reaches only this script, which asks main to
# stop (SIGTERM); main stops the apps in order, then the broker.
out="$run/logs/main.out"
setsid "$bin/main" --config "$eco" "${profile[@]}" >"$out" 2>"$run/logs/main.log" &
main_pid=$!

echo "== starting (main pid $main_pid, log $run/logs/main.log)"
# main says `starting X`, `online X`, `failed X: why`, then `ready` or `not-ready N`.
shown=0
result=""
dashboard=""
failed=()
for _ in $(seq 1 1200); do
    mapfile -t lines <"$out" 2>/dev/null || lines=()
    while [ "$shown" -lt "${#lines[@]}" ]; do
        line=${lines[$shown]}
        shown=$((shown + 1))
        case $line in
        "listening "*) echo "   broker  ${line#listening }" ;;
        "dashboard "*) dashboard=${line#dashboard } ;;
        "starting "*) echo "   ${line#starting } …" ;;
        "online "*) echo "   ${line#online } online" ;;
        "failed "*)
            echo " ! ${line#failed }" >&2
            failed+=("${line#failed }")
            ;;
        ready | "not-ready "*) result=$line ;;
        esac
    done
    [ -n "$result" ] && break
    if ! kill -0 "$main_pid" 2>/dev/null; then
        echo "main exited; see $run/logs/main.log" >&2
        tail -20 "$run/logs/main.log" >&2
        exit 1
    fi
    sleep 0.1
done
broker=$(sed -n 's/^listening //p' "$out" | head -1)
export SB_BROKER=$broker
if [ -z "$result" ]; then
    echo "not every app started within 120 s; see $run/logs/" >&2
    "$bin/sbctl" ls || true
    exit 1
fi
if [ "$result" != ready ]; then
    for f in "${failed[@]}"; do
        case $f in
        receive*)
            echo "the gateway did not start, so nothing can serve clients:" >&2
            echo "   $f" >&2
            exit 1
            ;;
        esac
    done
fi
"$bin/sbctl" ls
listen=$(grep -o '127.0.0.1:[0-9]*' <<<"$(grep -A6 'name = "receive"' "$eco" | grep -E 'args|SB_LISTEN' || true)" | head -1)
listen=${listen:-127.0.0.1:3000}
echo
if [ "$result" != ready ]; then
    echo "STARTED WITH ERRORS: ${#failed[@]} app(s) did not start (left to their restart policy):"
    for f in "${failed[@]}"; do echo "   $f"; done
    echo
fi
echo "Open:      http://$listen/   the demo app: a chat room and a live map (clients/js)"
echo "WebSocket: ws://$listen/ws   (also /uws/*; GET http://$listen/health)"
echo "Broker:    $broker"
[ -n "$dashboard" ] && echo "Dashboard: $dashboard   (Prometheus: ${dashboard}metrics; probes: /health, /ready)"
echo "Try:       scripts/ws-send.sh chat join '{\"room\":\"lobby\"}' --listen-ms 3000"
echo "Ops:       $bin/sbctl ls | reload chat | logs loc01 -f"
if [ -n "${SB_AUTH_SECRET:-}" ]; then
    echo "Auth:      on (secret kept in $auth_file). A token for ada: $bin/sbctl token --sub ada"
    echo "           (then ?token=… on the URL, or the auth op; scripts/ws-send.sh --token …)"
else
    echo "Auth:      off: each connection is an anonymous user. To switch it on, start with"
    echo "           SB_AUTH=1 scripts/run-all.sh   and mint tokens with $bin/sbctl token --sub ada"
fi
echo "Ctrl-C stops everything."
# main exits 0 when asked to stop everything (`sbctl shutdown`), having stopped
# every app: that is the end of the run, not a crash.
status=0
wait "$main_pid" || status=$?
main_pid=""
if [ "$status" -eq 0 ]; then
    echo "main stopped every app and exited (sbctl shutdown)"
    exit 0
fi
echo "main exited with status $status; see $run/logs/main.log" >&2
tail -20 "$run/logs/main.log" >&2
exit 1

#!/usr/bin/env bash
# Finds (or makes) a MariaDB the system can use, checks it with the real
# credentials (a SELECT 1), and writes what it found to $SB_RUN_DIR/mariadb.env
# (default run/mariadb.env, mode 600) for run-all.sh and test.sh to source:
#
#   SB_MYSQL=mysql://USER:PASSWORD@HOST:PORT   the server, no database name
#   SB_MYSQL_STARTED=PID                        only when this run started a private server
#
# In order, the first that works:
#   1. the server URL already configured: $SB_MYSQL, else $DATABASE_URL (its
#      database name dropped), else the one saved in mariadb.env, else
#      mysql://root@127.0.0.1:3306 (a server without a root password over TCP);
#   2. the system server, reached as root through its Unix socket (Debian's
#      default: root is let in only that way, by unix_socket authentication):
#      a dedicated user `switchboard` is created (or its password reset) with a
#      random password kept in mariadb.env, with privileges on the databases
#      `switchboard`, `sb_test_%` and `sb_chaos_%` only; the system server is
#      started first if it is installed but not running;
#   3. a private server with its data in $SB_RUN_DIR/mariadb, on its own port
#      ($SB_PRIVATE_DB_PORT, default 3307), loopback only, provisioned the same way
#      (its root is then reachable only through its own socket by the OS root).
# Says which it did, on stderr. Exits 1 (and says what to install) when none works.
#
# Environment: SB_DB_HOST (127.0.0.1), SB_DB_PORT (3306), SB_DB_SOCKET (the system
# server's socket, /run/mysqld/mysqld.sock), SB_RUN_DIR (run), SB_PRIVATE_DB_PORT.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
host=${SB_DB_HOST:-127.0.0.1}
port=${SB_DB_PORT:-3306}
socket=${SB_DB_SOCKET:-/run/mysqld/mysqld.sock}
run_dir=${SB_RUN_DIR:-$here/run}
private_port=${SB_PRIVATE_DB_PORT:-3307}
env_file="$run_dir/mariadb.env"
mkdir -p "$run_dir"

say() { echo "mariadb: $*" >&2; }

client=$(command -v mariadb || command -v mysql || true)
server=$(command -v mariadbd || command -v mysqld || true)
[ -z "$server" ] && [ -x /usr/sbin/mariadbd ] && server=/usr/sbin/mariadbd
if [ -z "$client" ]; then
    say "no MariaDB client (mariadb) installed; install it with: apt-get install -y mariadb-server"
    exit 1
fi

# parse URL → sets u_user u_pass u_host u_port (mysql://user[:pass]@host[:port][/db][?…])
parse() {
    local rest=${1#mysql://}
    rest=${rest%%\?*}
    rest=${rest%%/*}
    local cred=${rest%@*} addr=${rest##*@}
    [ "$cred" = "$rest" ] && cred=root
    u_user=${cred%%:*}
    u_pass=""
    [ "$cred" != "$u_user" ] && u_pass=${cred#*:}
    u_host=${addr%:*}
    u_port=${addr##*:}
    [ "$u_port" = "$addr" ] && u_port=3306
    return 0
}

# works URL → 0 when a SELECT 1 with these credentials succeeds over TCP
works() {
    parse "$1"
    MYSQL_PWD="$u_pass" "$client" --protocol=tcp -h "$u_host" -P "$u_port" -u "$u_user" \
        --connect-timeout=3 -N -e 'SELECT 1' >/dev/null 2>&1
}

# listening HOST PORT → 0 when something accepts TCP there
listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

save() { # save URL [STARTED_PID]
    umask 077
    {
        echo "SB_MYSQL='$1'"
        if [ -n "${2:-}" ]; then echo "SB_MYSQL_STARTED=$2"; fi
    } >"$env_file"
}

# provision SOCKET HOST PORT → creates/refreshes the switchboard user through the
# root socket; 0 and saves on success.
provision() {
    local sock=$1 h=$2 p=$3
    "$client" --protocol=socket -S "$sock" -uroot -N -e 'SELECT 1' >/dev/null 2>&1 || return 1
    local pw
    pw=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
    "$client" --protocol=socket -S "$sock" -uroot <<SQL || return 1
CREATE USER IF NOT EXISTS 'switchboard'@'localhost' IDENTIFIED BY '$pw';
CREATE USER IF NOT EXISTS 'switchboard'@'127.0.0.1' IDENTIFIED BY '$pw';
ALTER USER 'switchboard'@'localhost' IDENTIFIED BY '$pw';
ALTER USER 'switchboard'@'127.0.0.1' IDENTIFIED BY '$pw';
GRANT ALL PRIVILEGES ON \`switchboard\`.* TO 'switchboard'@'localhost', 'switchboard'@'127.0.0.1';
GRANT ALL PRIVILEGES ON \`sb\_test\_%\`.* TO 'switchboard'@'localhost', 'switchboard'@'127.0.0.1';
GRANT ALL PRIVILEGES ON \`sb\_chaos\_%\`.* TO 'switchboard'@'localhost', 'switchboard'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
    url="mysql://switchboard:$pw@$h:$p"
    works "$url" || return 1
    save "$url" "${4:-}"
    return 0
}

# 1. What is configured.
candidates=()
[ -n "${SB_MYSQL:-}" ] && candidates+=("$SB_MYSQL|SB_MYSQL")
[ -n "${DATABASE_URL:-}" ] && candidates+=("$DATABASE_URL|DATABASE_URL")
if [ -f "$env_file" ]; then
    saved=$(sed -n "s/^SB_MYSQL='\(.*\)'$/\1/p" "$env_file")
    if [ -n "$saved" ]; then candidates+=("$saved|$env_file"); fi
else
    saved=""
fi
candidates+=("mysql://root@$host:$port|the default")
for c in "${candidates[@]}"; do
    url=${c%|*}
    if works "$url"; then
        parse "$url"
        say "using $u_user@$u_host:$u_port (from ${c##*|}); SELECT 1 answered"
        # Keep only the server part: callers add the database name.
        if [ -n "$u_pass" ]; then server_url="mysql://$u_user:$u_pass@$u_host:$u_port"; else server_url="mysql://$u_user@$u_host:$u_port"; fi
        # Found running: not ours to stop.
        save "$server_url"
        exit 0
    fi
done

# 2. The system server, as root through its socket.
if ! listening "$host" "$port" && [ -n "$server" ] && [ "$port" = 3306 ]; then
    say "nothing answers on $host:$port; starting the system server ($server)"
    mkdir -p /run/mysqld 2>/dev/null && chown mysql:mysql /run/mysqld 2>/dev/null || true
    if command -v systemctl >/dev/null 2>&1 && systemctl start mariadb 2>/dev/null; then
        :
    elif command -v start-stop-daemon >/dev/null 2>&1; then
        start-stop-daemon --start --oknodo --background --exec "$server" >/dev/null 2>&1 || true
    fi
    for _ in $(seq 1 40); do listening "$host" "$port" && break; sleep 0.5; done
fi
if listening "$host" "$port" && [ -S "$socket" ]; then
    if provision "$socket" "$host" "$port"; then
        say "root is refused over TCP on $host:$port; created the user switchboard through $socket (password in $env_file)"
        exit 0
    fi
    say "the server on $host:$port refuses the configured credentials and root cannot log in through $socket"
fi

# 3. A private server under the run folder, on its own port.
if [ -z "$server" ]; then
    say "no usable server on $host:$port and none installed; install it with: apt-get install -y mariadb-server"
    exit 1
fi
data="$run_dir/mariadb"
sock="$data/mysqld.sock"
say "starting a private server in $data on 127.0.0.1:$private_port"
mkdir -p "$data"
if [ ! -d "$data/mysql" ]; then
    install_db=$(command -v mariadb-install-db || command -v mysql_install_db || true)
    if [ -z "$install_db" ]; then
        say "mariadb-install-db not found; install mariadb-server"
        exit 1
    fi
    "$install_db" --no-defaults --datadir="$data" --user="$(id -un)" \
        --auth-root-authentication-method=normal >"$data/install.log" 2>&1 || {
        say "mariadb-install-db failed; see $data/install.log"
        exit 1
    }
fi
if ! listening 127.0.0.1 "$private_port"; then
    nohup "$server" --no-defaults --datadir="$data" --port="$private_port" --bind-address=127.0.0.1 \
        --socket="$sock" --pid-file="$data/mysqld.pid" --user="$(id -un)" \
        >"$data/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 60); do [ -S "$sock" ] && listening 127.0.0.1 "$private_port" && break; sleep 0.5; done
else
    pid="" # already running: not started by this run
fi
# Provisioned before: the saved user still works.
if [ -n "${saved:-}" ] && works "$saved"; then
    save "$saved" "$pid"
    say "private server up on 127.0.0.1:$private_port (data in $data, user switchboard)"
    exit 0
fi
if provision "$sock" 127.0.0.1 "$private_port" "${pid:-}"; then
    # Nobody logs in as the private server's root over TCP; the OS root still can
    # through its socket.
    "$client" --protocol=socket -S "$sock" -uroot \
        -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket" >/dev/null 2>&1 || true
    say "private server up on 127.0.0.1:$private_port (data in $data, user switchboard, password in $env_file)"
    exit 0
fi
say "neither the system server nor a private one could be used; see $data/server.log"
exit 1

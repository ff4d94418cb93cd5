#!/usr/bin/env bash
# Makes sure a MariaDB server answers on $SB_DB_HOST:$SB_DB_PORT (127.0.0.1:3306 by
# default). If none does and the server is installed, starts one and waits for it.
# Says what to install if it is not.
set -euo pipefail
host=${SB_DB_HOST:-127.0.0.1}
port=${SB_DB_PORT:-3306}

ping() {
    if command -v mariadb-admin >/dev/null 2>&1; then
        mariadb-admin --protocol=tcp -h "$host" -P "$port" -uroot ping >/dev/null 2>&1
    elif command -v mysqladmin >/dev/null 2>&1; then
        mysqladmin --protocol=tcp -h "$host" -P "$port" -uroot ping >/dev/null 2>&1
    else
        (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
    fi
}

if ping; then
    echo "mariadb: reachable on $host:$port"
    exit 0
fi

server=$(command -v mariadbd || command -v mysqld || true)
[ -z "$server" ] && [ -x /usr/sbin/mariadbd ] && server=/usr/sbin/mariadbd
if [ -z "$server" ]; then
    echo "mariadb: no server on $host:$port and none installed." >&2
    echo "         install it with: apt-get install -y mariadb-server" >&2
    exit 1
fi

echo "mariadb: not reachable on $host:$port; starting $server"
mkdir -p /run/mysqld 2>/dev/null && chown mysql:mysql /run/mysqld 2>/dev/null || true
if command -v start-stop-daemon >/dev/null 2>&1; then
    start-stop-daemon --start --oknodo --background --exec "$server" || true
fi
for _ in $(seq 1 40); do
    if ping; then
        echo "mariadb: up on $host:$port"
        exit 0
    fi
    sleep 0.5
done

# The system's server would not start (no configuration, no permission, a broken
# data folder): run a private one with its data under the project.
here=$(cd "$(dirname "$0")/.." && pwd)
data="$here/run/mariadb"
echo "mariadb: the system server did not come up; starting a private one in $data"
mkdir -p "$data"
if [ ! -d "$data/mysql" ]; then
    install_db=$(command -v mariadb-install-db || command -v mysql_install_db || true)
    if [ -z "$install_db" ]; then
        echo "mariadb: mariadb-install-db not found; install mariadb-server" >&2
        exit 1
    fi
    "$install_db" --no-defaults --datadir="$data" --user="$(id -un)" \
        --auth-root-authentication-method=normal >"$data/install.log" 2>&1 || {
        echo "mariadb: mariadb-install-db failed; see $data/install.log" >&2
        exit 1
    }
fi
nohup "$server" --no-defaults --datadir="$data" --port="$port" --bind-address="$host" \
    --socket="$data/mysqld.sock" --pid-file="$data/mysqld.pid" --user="$(id -un)" \
    >"$data/server.log" 2>&1 &
for _ in $(seq 1 60); do
    if ping; then
        echo "mariadb: private server up on $host:$port (data in $data)"
        exit 0
    fi
    sleep 0.5
done
echo "mariadb: neither the system server nor a private one answered on $host:$port; see $data/server.log" >&2
exit 1

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
    start-stop-daemon --start --oknodo --background --exec "$server"
else
    nohup "$server" >/dev/null 2>&1 &
fi
for _ in $(seq 1 60); do
    if ping; then
        echo "mariadb: up on $host:$port"
        exit 0
    fi
    sleep 0.5
done
echo "mariadb: started $server but it did not answer on $host:$port within 30 s" >&2
exit 1

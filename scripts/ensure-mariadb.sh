#!/usr/bin/env bash
# Make sure a MariaDB server answers on 127.0.0.1:3306 (root, no password) for the tests:
# start the local one if it is installed, install mariadb-server first when root.
set -euo pipefail
host=${SESSION_TEST_MARIADB_HOST:-127.0.0.1}
port=${SESSION_TEST_MARIADB_PORT:-3306}
py=${PYTHON:-.venv/bin/python}

reachable() {
    "$py" - "$host" "$port" <<'PY' >/dev/null 2>&1
import sys, pymysql
pymysql.connect(host=sys.argv[1], port=int(sys.argv[2]), user="root", connect_timeout=2).close()
PY
}

reachable && exit 0
if [ ! -x /usr/sbin/mariadbd ]; then
    scripts/require-packages.sh mariadb-server
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "error: MariaDB is not reachable on $host:$port" >&2
    echo "run:   sudo start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd" >&2
    exit 1
fi
echo ">> starting MariaDB"
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
for _ in $(seq 1 60); do
    reachable && exit 0
    sleep 0.5
done
echo "error: MariaDB did not answer on $host:$port within 30 s (see /var/log/mysql/)" >&2
exit 1

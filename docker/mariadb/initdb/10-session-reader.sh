# Sourced (not executed) by the mariadb image's entrypoint on the primary's first start,
# after it created MARIADB_DATABASE, MARIADB_USER and the replication user: adds the
# read-only user the session services use on the replica for lock-free reads. It is
# created on the primary with the binary log on, so replication brings it to the replica.
# SELECT reads the sessions; SLAVE MONITOR allows SHOW REPLICA STATUS, the lag check.
# Uses the entrypoint's docker_process_sql (root, on the init server's socket).

reader_user="${SESSION_DB_READER_USER:-sessions_reader}"
reader_password="${SESSION_DB_READER_PASSWORD:?set SESSION_DB_READER_PASSWORD}"
reader_database="${MARIADB_DATABASE:?set MARIADB_DATABASE}"
case "$reader_user$reader_database" in
    *[!A-Za-z0-9_]*)
        echo "10-session-reader.sh: SESSION_DB_READER_USER and MARIADB_DATABASE may hold only letters, digits and _" >&2
        exit 1 ;;
esac
# a string literal: backslashes and quotes escaped
reader_password="${reader_password//\\/\\\\}"
reader_password="${reader_password//\'/\\\'}"

docker_process_sql <<EOSQL
CREATE USER '$reader_user'@'%' IDENTIFIED BY '$reader_password';
GRANT SELECT ON \`$reader_database\`.* TO '$reader_user'@'%';
GRANT SLAVE MONITOR ON *.* TO '$reader_user'@'%';
EOSQL

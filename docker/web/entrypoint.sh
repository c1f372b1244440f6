#!/bin/sh
# Web node: PHP-FPM in the background, nginx in the foreground; the container stops
# when either exits.
set -eu
mkdir -p /run/php
php-fpm8.2 --nodaemonize --fpm-config /etc/php/8.2/fpm/php-fpm.conf &
fpm=$!
nginx -g 'daemon off;' &
web=$!
trap 'kill -TERM "$fpm" "$web" 2>/dev/null' TERM INT
# wait for the first one to exit, then stop the other
while kill -0 "$fpm" 2>/dev/null && kill -0 "$web" 2>/dev/null; do
    sleep 1
done
kill -TERM "$fpm" "$web" 2>/dev/null || true
wait

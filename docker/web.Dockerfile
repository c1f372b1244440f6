# A PHP web node: nginx + PHP-FPM 8.2 serving examples/, with the session handler enabled
# by php.ini (auto_prepend_file) and configured by SESSION_SERVICE_* environment variables.
# Build from the repository root:  docker build -f docker/web.Dockerfile .
FROM debian:bookworm-slim

RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends \
        nginx php8.2-fpm php8.2-curl php-msgpack php-symfony-http-foundation ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && rm -f /etc/nginx/sites-enabled/default

COPY php_handler /opt/session-service/php_handler
COPY examples /var/www/examples
COPY docker/web/session-service.ini /etc/php/8.2/fpm/conf.d/90-session-service.ini
COPY docker/web/fpm-pool.conf /etc/php/8.2/fpm/pool.d/www.conf
COPY docker/web/nginx.conf /etc/nginx/nginx.conf
COPY docker/web/entrypoint.sh /usr/local/bin/web-node

EXPOSE 80
HEALTHCHECK --interval=5s --timeout=3s --retries=3 \
    CMD ["php", "-r", "exit(@file_get_contents('http://127.0.0.1/health.php') === \"ok\\n\" ? 0 : 1);"]
CMD ["/usr/local/bin/web-node"]

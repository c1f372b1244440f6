# The round-robin balancer (balancer/): no stickiness, stats on a second port.
# Build from the repository root:  docker build -f docker/balancer.Dockerfile .
FROM python:3.11-slim

WORKDIR /opt/session-service
COPY pyproject.toml ./
COPY session_service ./session_service
COPY balancer ./balancer
RUN touch README.md && pip install --no-cache-dir . && rm -rf /root/.cache
# the health check that compose runs (and keepalived, on a host: deploy/keepalived/)
COPY deploy/check_balancer.py /usr/local/lib/session-balancer/check_balancer.py

# unprivileged: listen on 8080 (not 80), stats on 8404
EXPOSE 8080 8404
USER nobody
ENTRYPOINT ["session-balancer", "-f"]
# compose.yaml gives the listen address, the backends and the options as the command.
CMD ["--help"]

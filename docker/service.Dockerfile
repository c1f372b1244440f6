# The session service (session_service/): uvicorn over MySQL/MariaDB or SQLite.
# Build from the repository root:  docker build -f docker/service.Dockerfile .
FROM python:3.11-slim

WORKDIR /opt/session-service
COPY pyproject.toml ./
COPY session_service ./session_service
COPY balancer ./balancer
# pyproject names README.md as the long description; the image does not need its text
RUN touch README.md && pip install --no-cache-dir . && rm -rf /root/.cache

# Every setting is an environment variable (session-service serve --help lists them);
# compose.yaml sets SESSION_DB_URL and SESSION_SERVICE_TOKENS.
ENV SESSION_SERVICE_HOST=0.0.0.0 \
    SESSION_SERVICE_PORT=7070
EXPOSE 7070
USER nobody
HEALTHCHECK --interval=5s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:7070/readyz', timeout=2)"]
CMD ["session-service", "serve"]

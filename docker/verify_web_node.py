"""Run the web node's own configuration without Docker, as far as one host allows.

Needs Debian's nginx and php8.2-fpm (``apt-get install -y nginx php8.2-fpm``); not part of
``make test``. Takes docker/web/nginx.conf, fpm-pool.conf and session-service.ini, rewrites
only the absolute paths (docroot, handler, socket, pid and log files) and the listen port,
starts php-fpm8.2 and nginx with them in front of a real session service, and checks that:

- the handler is enabled by the ini file alone and configured by environment variables
  that reach PHP through the pool (``clear_env = no``): NODE_NAME names the node;
- a session written through nginx + FPM is read by a ``php -S`` node of the stack (shared
  through the service), and the Symfony example runs;
- FPM and nginx log no PHP warning or error.

    .venv/bin/python docker/verify_web_node.py
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stack.processes import Process, ProcessError, free_port
from stack.runner import PHP_PROBLEM, REPO, Stack, StackConfig

WEB = REPO / "docker" / "web"


def _answers(client: httpx.Client, fpm: Process) -> bool:
    if not fpm.running:
        raise ProcessError(fpm.describe(f"exited with {fpm.returncode}"))
    try:
        return client.get("/health.php").text == "ok\n"
    except httpx.HTTPError:
        return False


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="web-node-"))
    tmp.chmod(0o755)  # nginx and FPM workers run as www-data
    port = free_port()
    sock = tmp / "fpm.sock"
    (tmp / "conf.d").mkdir()
    ini = (WEB / "session-service.ini").read_text()
    ini = ini.replace("/opt/session-service/php_handler", str(REPO / "php_handler"))
    (tmp / "conf.d" / "90-session-service.ini").write_text(ini)
    pool = re.sub(r"(?m)^listen = .*$", f"listen = {sock}", (WEB / "fpm-pool.conf").read_text())
    (tmp / "pool.conf").write_text(pool)
    (tmp / "php-fpm.conf").write_text(
        f"[global]\npid = {tmp}/fpm.pid\nerror_log = {tmp}/fpm.log\ninclude = {tmp}/pool.conf\n"
    )
    nginx = (WEB / "nginx.conf").read_text()
    for old, new in [
        ("/var/www/examples", str(REPO / "examples")),
        ("unix:/run/php/php8.2-fpm.sock", f"unix:{sock}"),
        ("listen 80 default_server", f"listen 127.0.0.1:{port} default_server"),
        ("pid /run/nginx.pid", f"pid {tmp}/nginx.pid"),
        ("error_log /dev/stderr warn", f"error_log {tmp}/nginx-error.log warn"),
    ]:
        assert old in nginx, old
        nginx = nginx.replace(old, new)
    (tmp / "nginx.conf").write_text(nginx)

    config = StackConfig(db_url=f"sqlite:///{tmp}/sessions.db", workdir=tmp / "stack", nodes=1)
    with Stack(config) as stack:
        env = dict(
            os.environ,
            PHP_INI_SCAN_DIR=f"/etc/php/8.2/fpm/conf.d:{tmp}/conf.d",
            NODE_NAME="fpm-node",
            SESSION_SERVICE_URL=stack.service_url,
            SESSION_SERVICE_TOKEN=stack.config.token,
        )
        fpm_cmd = ["php-fpm8.2", "--nodaemonize", "-y", str(tmp / "php-fpm.conf")]
        fpm = Process("php-fpm8.2", fpm_cmd, None, env).start()
        nginx_cmd = ["nginx", "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"]
        web = Process("nginx", nginx_cmd).start()
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
            web.wait_for(lambda: _answers(client, fpm), "answer from nginx + FPM", 15)
            login = client.post("/shop/login.php?format=json", data={"user": "dora"})
            assert login.headers["x-served-by"] == "fpm-node", login.headers
            cart = client.post("/shop/cart.php?format=json", data={"item": "pear"}).json()
            assert cart["user"] == "dora" and cart["cart"] == {"pear": 1}, cart
            other = httpx.get(
                stack.nodes[0].url + "/shop/cart.php?format=json", cookies=dict(client.cookies)
            ).json()
            assert other["node"] == "web1" and other["cart"] == {"pear": 1}, other
            symfony = client.get("/symfony/?format=json")
            assert symfony.status_code == 200 and symfony.json()["node"] == "fpm-node"
            assert not stack.php_problems()
        finally:
            for proc in (web, fpm):
                proc.stop()
    logs = [tmp / "fpm.log", tmp / "nginx-error.log"]
    problems = [
        line
        for log in logs
        if log.exists()
        for line in log.read_text().splitlines()
        if PHP_PROBLEM.search(line) or "[error]" in line or "[emerg]" in line
    ]
    assert not problems, problems
    print(f"web node configuration OK: nginx + php-fpm8.2 + handler via php.ini ({tmp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

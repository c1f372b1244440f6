"""The balancer HA pair of docs/scaling.md: deploy/keepalived/lb{1,2}.conf and
deploy/check_balancer.py, checked with the real tools.

- keepalived's own config check accepts both files (and refuses a broken one), and the
  two files agree on everything a VRRP pair must share;
- the health script passes against a real balancer with a live backend, and fails when
  the backend is gone or the balancer is down;
- a real failover: two balancers, each with keepalived running the shipped config, in
  two network namespaces (lb1, lb2) bridged to a third (web: the backend and the
  client); killing lb1's balancer moves the floating IP to lb2 and requests to the
  floating IP keep being answered; when lb1's balancer is back, lb1 takes the IP back;
  with the only web node down, the IP stays on lb1, which answers 503.

Needs root, iproute2 and keepalived (`make test` installs it). A missing tool fails the
test with the command that installs it, as the other tests do: nothing here skips.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stack.processes import Process
from tests.support import ROOT, free_port, wait_until

DEPLOY = ROOT / "deploy"
CHECK = DEPLOY / "check_balancer.py"
CONFIGS = {name: DEPLOY / "keepalived" / f"{name}.conf" for name in ("lb1", "lb2")}
INSTALLED_CHECK = "/usr/local/lib/session-balancer/check_balancer.py"
# the addresses of the shipped configs (192.0.2.0/24 is the documentation range)
VIP, WEB_ADDRESS = "192.0.2.10", "192.0.2.20"
LB_ADDRESSES = {"lb1": "192.0.2.11", "lb2": "192.0.2.12"}


def need(tool: str, package: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin")
    if path is None:
        pytest.fail(
            f"{tool} is not installed: run `scripts/require-packages.sh {package}` "
            "(make test does)",
            pytrace=False,
        )
    return path


def local_config(name: str, tmp_path: Path) -> Path:
    """The shipped config with one change: the health script where this checkout has it."""
    text = CONFIGS[name].read_text()
    assert text.count(INSTALLED_CHECK) == 2, name  # balancer_alive and web_node_up
    path = tmp_path / f"{name}.conf"
    path.write_text(text.replace(INSTALLED_CHECK, str(CHECK)))
    return path


def config_test(keepalived: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [keepalived, "--config-test", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def settings_of(path: Path) -> dict[str, str]:
    """`keyword value` lines of a keepalived config (last one wins), comments dropped."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        words = line.split("#", 1)[0].split(None, 1)
        if len(words) == 2:
            found[words[0]] = words[1].strip()
    return found


SCRIPTS = ("vrrp_script balancer_alive", "vrrp_script web_node_up")


def script_settings(name: str) -> dict[str, str]:
    """`keyword value` lines of one vrrp_script block of lb1.conf."""
    return dict(line.split(None, 1) for line in block(CONFIGS["lb1"], name))


def block(path: Path, name: str) -> list[str]:
    match = re.search(name + r"\s*\{([^}]*)\}", path.read_text())
    assert match, (path.name, name)
    return [line.split("#", 1)[0].strip() for line in match.group(1).splitlines() if line.strip()]


# --------------------------------------------------------------------------- config files


def test_keepalived_accepts_both_configs(tmp_path: Path) -> None:
    keepalived = need("keepalived", "keepalived")
    for name in CONFIGS:
        result = config_test(keepalived, local_config(name, tmp_path))
        assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), name
    # the check is real: a typo and an out-of-range value are refused, with the line
    broken = tmp_path / "broken.conf"
    text = local_config("lb1", tmp_path).read_text()
    broken.write_text(text.replace("priority 150", "priority 1500").replace("advert_int", "advrt"))
    result = config_test(keepalived, broken)
    assert result.returncode != 0
    assert "Unknown keyword 'advrt'" in result.stderr and "1500" in result.stderr


def test_the_two_configs_make_one_pair() -> None:
    lb1, lb2 = (settings_of(CONFIGS[name]) for name in ("lb1", "lb2"))
    assert (lb1["state"], lb2["state"]) == ("MASTER", "BACKUP")
    for key in ("virtual_router_id", "advert_int", "auth_type", "auth_pass", "interface"):
        assert lb1[key] == lb2[key], key
    assert len(lb1["auth_pass"]) <= 8  # keepalived uses only the first 8 characters
    assert (lb1["router_id"], lb2["router_id"]) == ("lb1", "lb2")
    assert lb1["unicast_src_ip"] == LB_ADDRESSES["lb1"]
    assert lb2["unicast_src_ip"] == LB_ADDRESSES["lb2"]
    assert block(CONFIGS["lb1"], "unicast_peer") == [LB_ADDRESSES["lb2"]]
    assert block(CONFIGS["lb2"], "unicast_peer") == [LB_ADDRESSES["lb1"]]
    for name in (*SCRIPTS, "virtual_ipaddress", "track_script"):
        assert block(CONFIGS["lb1"], name) == block(CONFIGS["lb2"], name), name
    assert block(CONFIGS["lb1"], "virtual_ipaddress") == [f"{VIP}/24 dev eth0"]
    assert block(CONFIGS["lb1"], "track_script") == ["balancer_alive", "web_node_up"]
    alive, web = (script_settings(name) for name in SCRIPTS)
    # the scripts keepalived runs are deploy/'s, on the stats port compose uses
    url = "http://127.0.0.1:8404/stats"
    assert alive["script"] == f'"{INSTALLED_CHECK} --alive {url}"'
    assert web["script"] == f'"{INSTALLED_CHECK} {url}"'
    assert "weight" not in alive  # a dead balancer: FAULT, the IP leaves at once
    healthy1, healthy2, weight = int(lb1["priority"]), int(lb2["priority"]), int(web["weight"])
    sick1, sick2 = healthy1 + weight, healthy2 + weight
    assert healthy1 > healthy2  # both with a web node UP: lb1
    assert sick1 < healthy2 and sick2 < healthy1  # one without: the other one
    assert sick1 > sick2  # neither: lb1 keeps the IP (and answers 503)
    assert os.access(CHECK, os.X_OK)
    assert CHECK.read_text().startswith("#!/usr/bin/env python3\n")


# --------------------------------------------------------------------------- health script


#: keepalived's environment as systemd starts it: its scripts' `/usr/bin/env python3` is
#: the system's Python (not a pyenv shim, slow enough on a loaded machine to time out)
SYSTEM_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


class Processes:
    """Processes this test started, stopped (by their own pid) at the end."""

    def __init__(self) -> None:
        self.started: list[Process] = []

    def start(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> Process:
        proc = Process(log.stem, args, log, env, ROOT).start()
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop(15)


@pytest.fixture
def processes() -> Iterator[Processes]:
    running = Processes()
    yield running
    running.stop_all()


def web_root(tmp_path: Path) -> Path:
    """What the backend serves: `/` answers `web`, `/health` answers `ok`."""
    root = tmp_path / "www"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_text("web\n")
    (root / "health").write_text("ok\n")
    return root


def balancer_args(listen: str, backend: str, stats: str) -> list[str]:
    return [
        sys.executable, "-m", "balancer", "-f", "--stats", stats, "--check-path", "/health",
        "--check-interval", "0.2", "--check-timeout", "2", "--rise", "1", "--fall", "2",
        listen, f"{backend},name=web",
    ]  # fmt: skip


def run_check(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CHECK), url], capture_output=True, text=True, timeout=30)


def check_until(url: str, passing: bool) -> subprocess.CompletedProcess[str]:
    """Run the health script until it passes (or fails); its last run."""
    last: list[subprocess.CompletedProcess[str]] = []

    def done() -> bool:
        last[:] = [run_check(url)]
        return (last[0].returncode == 0) == passing

    assert wait_until(done, 30, 0.2), (passing, last[0].returncode, last[0].stderr)
    return last[0]


def test_health_script_follows_the_balancer(tmp_path: Path, processes: Processes) -> None:
    backend_port, port, stats_port = free_port(), free_port(), free_port()
    backend_args = [sys.executable, "-m", "http.server", str(backend_port), "--bind", "127.0.0.1",
                    "--directory", str(web_root(tmp_path))]  # fmt: skip
    backend = processes.start(backend_args, tmp_path / "backend.log")
    balancer = processes.start(
        balancer_args(str(port), f"127.0.0.1:{backend_port}", str(stats_port)),
        tmp_path / "balancer.log",
    )
    url = f"http://127.0.0.1:{stats_port}/stats"
    passed = check_until(url, passing=True)
    assert (passed.stdout, passed.stderr) == ("", "")
    # the backend stops: the balancer is alive but has nothing healthy to send requests to
    backend.stop(15, signal.SIGKILL)
    failed = check_until(url, passing=False)
    assert failed.returncode == 1
    assert failed.stderr == "check_balancer.py: no backend is UP (web DOWN)\n"
    alive = subprocess.run([str(CHECK), "--alive", url], capture_output=True, text=True)
    assert (alive.returncode, alive.stderr) == (0, "")  # the balancer itself answers
    # it comes back: the script passes again
    processes.start(backend_args, tmp_path / "backend.log")
    check_until(url, passing=True)
    # the balancer dies
    balancer.stop(15, signal.SIGKILL)
    for args in ([url], ["--alive", url]):
        failed = subprocess.run([str(CHECK), *args], capture_output=True, text=True)
        assert failed.returncode == 1
        assert failed.stderr.startswith(f"check_balancer.py: balancer stats at {url} not reachable")
    # bad usage is a one-line error, not a traceback
    bad = subprocess.run([str(CHECK), "--timeout", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--timeout must be positive" in bad.stderr
    assert "Traceback" not in bad.stderr


# --------------------------------------------------------------------------- failover


class Namespaces:
    """lb1 and lb2 (one `eth0` each) and web (bridge br0 joining both): all removed at end."""

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.prefix = f"sbha{os.getpid()}"
        self.made: list[str] = []

    def name(self, short: str) -> str:
        return f"{self.prefix}-{short}"

    def run(self, *args: str) -> str:
        result = subprocess.run([self.ip, *args], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            pytest.fail(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}", pytrace=False)
        return result.stdout

    def create(self) -> None:
        for short in ("web", "lb1", "lb2"):
            self.run("netns", "add", self.name(short))
            self.made.append(self.name(short))
            self.run("-n", self.name(short), "link", "set", "lo", "up")
        web = self.name("web")
        self.run("-n", web, "link", "add", "br0", "type", "bridge")
        self.run("-n", web, "addr", "add", f"{WEB_ADDRESS}/24", "dev", "br0")
        self.run("-n", web, "link", "set", "br0", "up")
        for i, short in enumerate(("lb1", "lb2"), 1):
            ns = self.name(short)
            self.run("link", "add", "eth0", "netns", ns, "type", "veth",
                     "peer", "name", f"port{i}", "netns", web)  # fmt: skip
            self.run("-n", web, "link", "set", f"port{i}", "master", "br0")
            self.run("-n", web, "link", "set", f"port{i}", "up")
            self.run("-n", ns, "addr", "add", f"{LB_ADDRESSES[short]}/24", "dev", "eth0")
            self.run("-n", ns, "link", "set", "eth0", "up")

    def exec(self, short: str, args: list[str]) -> list[str]:
        return [self.ip, "netns", "exec", self.name(short), *args]

    def has_vip(self, short: str) -> bool:
        return f" {VIP}/24" in self.run("-n", self.name(short), "-o", "-4", "addr", "show", "eth0")

    def remove(self) -> None:
        for ns in reversed(self.made):
            # what is left in a namespace of ours was started by this test (keepalived's
            # own children, the health script): end it by pid, then remove the namespace
            pids = subprocess.run([self.ip, "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run([self.ip, "netns", "del", ns], capture_output=True)


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    if os.geteuid() != 0:
        pytest.fail("the failover test needs root (network namespaces)", pytrace=False)
    made = Namespaces(need("ip", "iproute2"))
    try:
        made.create()
        yield made
    finally:
        made.remove()


def poll(predicate: Callable[[], bool], what: str, logs: list[Path], timeout: float = 60) -> None:
    if not wait_until(predicate, timeout, 0.1):
        tails = "\n".join(f"== {p.name}\n" + p.read_text()[-3000:] for p in logs if p.exists())
        raise AssertionError(f"{what} did not happen within {timeout} s\n{tails}")


def client_lines(log: Path) -> list[tuple[float, str]]:
    lines = []
    for line in log.read_text().splitlines():
        stamp, _, rest = line.partition(" ")
        lines.append((float(stamp), rest))
    return lines


def logged(log: Path, text: str) -> Callable[[], bool]:
    return lambda: text in log.read_text()


def client_tail(log: Path, since: float) -> str:
    return " ".join(r for t, r in client_lines(log) if t >= since)


def test_floating_ip_moves_to_the_backup_when_the_master_balancer_dies(
    tmp_path: Path, namespaces: Namespaces, processes: Processes
) -> None:
    keepalived = need("keepalived", "keepalived")
    logs = {name: tmp_path / f"{name}.log" for name in
            ("web", "bal-lb1", "bal-lb2", "ka-lb1", "ka-lb2", "client")}  # fmt: skip
    web = processes.start(
        namespaces.exec("web", [sys.executable, "-m", "http.server", "8000", "--bind",
                                WEB_ADDRESS, "--directory", str(web_root(tmp_path))]),
        logs["web"],
    )  # fmt: skip
    lb_args = balancer_args("0.0.0.0:8080", f"{WEB_ADDRESS}:8000", "127.0.0.1:8404")
    balancers = {
        short: processes.start(namespaces.exec(short, lb_args), logs[f"bal-{short}"])
        for short in ("lb1", "lb2")
    }
    for short in ("lb1", "lb2"):
        config = local_config(short, tmp_path)
        run = tmp_path / f"run-{short}"
        run.mkdir()
        processes.start(
            namespaces.exec(short, [
                keepalived, "--dont-fork", "--log-console", "--log-detail", "--vrrp",
                "--use-file", str(config), "--pid", str(run / "keepalived.pid"),
                "--vrrp_pid", str(run / "vrrp.pid"), "--checkers_pid", str(run / "checkers.pid"),
            ]),
            logs[f"ka-{short}"],
            env=SYSTEM_ENV,
        )  # fmt: skip
    all_logs = list(logs.values())
    poll(lambda: namespaces.has_vip("lb1") and not namespaces.has_vip("lb2"),
         "the floating IP on lb1 (MASTER)", all_logs)  # fmt: skip

    stop_file = tmp_path / "stop-client"
    client = processes.start(
        namespaces.exec("web", [sys.executable, str(Path(__file__).with_name("vip_client.py")),
                                f"http://{VIP}:8080/", str(stop_file)]),
        logs["client"],
    )  # fmt: skip

    def answered_since(since: float) -> int:
        return sum(1 for t, r in client_lines(logs["client"]) if t >= since and r == "ok web")

    poll(lambda: answered_since(0) >= 5, "5 answers through the floating IP on lb1", all_logs)

    # lb1's balancer dies: balancer_alive fails, lb1 goes to FAULT, lb2 takes the IP
    killed_at = time.time()
    balancers["lb1"].stop(15, signal.SIGKILL)
    poll(lambda: namespaces.has_vip("lb2") and not namespaces.has_vip("lb1"),
         "the floating IP moving to lb2", all_logs)  # fmt: skip
    poll(lambda: answered_since(killed_at) >= 20, "20 answers through lb2", all_logs)
    assert "Entering FAULT STATE" in logs["ka-lb1"].read_text()
    assert "Entering MASTER STATE" in logs["ka-lb2"].read_text()
    assert "SECURITY VIOLATION" not in logs["ka-lb1"].read_text()

    # lb1's balancer is back: after `rise` checks lb1 (higher priority) takes the IP back
    back_at = time.time()
    balancers["lb1"] = processes.start(namespaces.exec("lb1", lb_args), logs["bal-lb1"])
    poll(lambda: namespaces.has_vip("lb1") and not namespaces.has_vip("lb2"),
         "the floating IP returning to lb1", all_logs)  # fmt: skip
    poll(lambda: answered_since(back_at) >= 20, "20 answers after lb1 returned", all_logs)

    # the only web node goes down: both checks fail, and the IP stays on lb1 (90 > 40),
    # whose balancer answers 503 rather than the floating IP answering nothing
    down_at = time.time()
    web.stop(15, signal.SIGKILL)
    no_backend = "http 503 503 Service Unavailable: no backend is available"
    for short, change in (("lb1", "150 to 90"), ("lb2", "100 to 40")):
        poll(logged(logs[f"ka-{short}"], f"effective priority from {change}"),
             f"{short}'s web_node_up failing", all_logs)  # fmt: skip
    both_failed = time.time()
    poll(lambda: client_tail(logs["client"], both_failed).count(no_backend) >= 10,
         "10 answers 503 after both checks failed", all_logs)  # fmt: skip
    assert namespaces.has_vip("lb1") and not namespaces.has_vip("lb2")
    stop_file.touch()
    client.wait(30)

    lines = client_lines(logs["client"])
    # before the kill and once lb2 answered, every request was answered: the only failures
    # are the few while lb1 still held the IP with its balancer dead (fall x interval)
    before = [r for t, r in lines if t < killed_at]
    assert before and all(r == "ok web" for r in before[:-1]), before
    after_kill = [r for t, r in lines if killed_at <= t < back_at]
    first_ok = after_kill.index("ok web")
    assert all(r == "ok web" for r in after_kill[first_ok:]), after_kill
    after_return = [r for t, r in lines if back_at <= t < down_at]
    assert after_return.count("ok web") >= 20
    failures = [r for r in after_return if r != "ok web"]
    # the move back is planned (lb1 preempts only once its balancer passes its checks),
    # so at most the requests in flight at the moment the IP moves may fail
    assert len(failures) <= 3, failures

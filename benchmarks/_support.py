"""What the benchmarks share: free ports, a fresh installation, wrk."""

from __future__ import annotations

import importlib.util
import os
import re
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

HANGAR = [sys.executable, "-m", "hangar.cli.main"]
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_installation(work: Path, env: dict[str, str]) -> str:
    """`hangar server init` in work/data; returns the admin token (kept in work/token)."""
    subprocess.run(
        [
            *HANGAR,
            "server",
            "init",
            "--data-dir",
            str(work / "data"),
            "--org",
            "acme",
            "--admin-email",
            "bench@example.com",
            "--token-file",
            str(work / "token"),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    return everyday_token(work / "data")


def everyday_token(data_dir: Path) -> str:
    """A user token of the admin, minted in the store: not the bootstrap token.

    The token `server init` prints is the installation's break-glass token,
    each use of which is an audit event (a write) and a warning; measuring
    with it would measure that.
    """
    import datetime as dt

    from sqlalchemy import select

    from hangar.config.settings import ServerSettings
    from hangar.controlplane.state import ControlPlane
    from hangar.store.tables import User

    cp = ControlPlane.open(ServerSettings(data_dir=data_dir))
    try:
        with cp.db.write() as session:
            user = session.execute(select(User).where(User.is_operator.is_(True))).scalars().first()
            assert user is not None
            _, token = cp.tokens.mint(
                session,
                user_id=user.id,
                kind="user",
                org_id=None,
                ttl=dt.timedelta(days=1),
                name="benchmark token",
            )
    finally:
        cp.close()
    return token


def start_server(
    work: Path, env: dict[str, str], port: int, *extra: str
) -> subprocess.Popen[bytes]:
    """`hangar server run` for work/data with its agent in work/agent; logs to work/server.log."""
    with (work / "server.log").open("ab") as log:
        return subprocess.Popen(
            [
                *HANGAR,
                "server",
                "run",
                "--data-dir",
                str(work / "data"),
                "--listen-port",
                str(port),
                "--agent-listen-port",
                "0",
                "--metrics-port",
                "0",
                "--agent-dir",
                str(work / "agent"),
                "--log-level",
                "warning",
                *extra,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wrk(
    url: str,
    seconds: int,
    connections: int,
    *,
    threads: int = 1,
    host: str | None = None,
    script: Path | None = None,
    hosts_file: Path | None = None,
) -> dict[str, float]:
    """One wrk run: req/s, p50/p99 ms, non-2xx and socket errors, and wrk's own CPU.

    ``wrk_cpu`` is the CPU time wrk used over the run's wall time, per thread
    (1.0: its threads never waited, so it may have been the bottleneck).
    """
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if host:
        argv += ["-H", f"Host: {host}"]
    if script:
        argv += ["-s", str(script)]
    if hosts_file is not None:
        # Names in the URL resolve from hosts_file, in wrk's own mount namespace
        # only: wrk sends the URL's name as SNI, as a browser would.
        bind = 'mount --bind "$0" /etc/hosts && exec "$@"'
        argv = ["unshare", "-m", "sh", "-c", bind, str(hosts_file), *argv]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = subprocess.run(
        [*argv, url], capture_output=True, text=True, check=True, timeout=seconds + 60
    ).stdout
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise SystemExit(f"wrk printed no rate:\n{out}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}

    def pct(q: str) -> float:
        m = re.search(rf"{q}%\s+([\d.]+)(us|ms|s)\b", out)
        return float(m.group(1)) * scale[m.group(2)] if m else float("nan")

    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(found.group(1)),
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "non_2xx": float(bad.group(1)) if bad else 0.0,
        "errors": float(sum(int(g) for g in errors.groups())) if errors else 0.0,
        "wrk_cpu": cpu / wall / threads,
    }


def build_example_image(output: Path) -> str:
    """The example app's OCI image (busybox httpd on :8080), built by examples/hello/build.py."""
    spec = importlib.util.spec_from_file_location("hello_build", ROOT / "examples/hello/build.py")
    assert spec is not None and spec.loader is not None
    hello = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hello)
    return str(hello.build(output))


def process_tree_cpu(pid: int) -> float:
    """CPU seconds used so far by ``pid``, its threads and its live descendants."""
    total, todo = 0.0, [pid]
    tick = os.sysconf("SC_CLK_TCK")
    for _ in range(1000):  # a bounded walk of the process tree
        if not todo:
            break
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def machine_cpu(machine_id: str) -> float:
    """CPU seconds used so far by a runc machine's cgroup (``/hangar/<id>``), v2 or v1."""
    v2 = Path(f"/sys/fs/cgroup/hangar/{machine_id}/cpu.stat")
    if v2.exists():
        for line in v2.read_text().splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
    v1 = Path(f"/sys/fs/cgroup/cpuacct/hangar/{machine_id}/cpuacct.usage")
    if v1.exists():
        return int(v1.read_text()) / 1e9
    return float("nan")

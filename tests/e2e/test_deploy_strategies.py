"""Deploy strategies under load: wrk through the edge while five machines are replaced.

Every strategy (rolling, canary, blue-green) and a rollback must leave wrk
with no response other than 2xx and no socket error: machines leave the
edge's rotation and drain before they are stopped, and enter it only once
their checks pass.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.test_edge_flow import APP_HOST, Edge, edge, fetch, in_rotation, wait_for

__all__ = ["edge"]  # the fixture, shared with the edge's own tests

pytestmark = [pytest.mark.slow]

MACHINES = 5


class Wrk:
    """wrk against the edge's HTTPS port until stopped; then its counts."""

    def __init__(self, edge: Edge) -> None:
        hosts = edge.tmp / "wrk-hosts"
        hosts.write_text(f"127.0.0.1 {APP_HOST}\n")
        # The URL's name resolves from hosts, in wrk's own mount namespace only.
        bind = 'mount --bind "$0" /etc/hosts && exec "$@"'
        argv = ["wrk", "-t1", "-c8", "-d600s", f"https://{APP_HOST}:{edge.https_port}/"]
        self.proc = subprocess.Popen(
            ["unshare", "-m", "sh", "-c", bind, str(hosts), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def stop(self) -> tuple[int, int, int, str]:
        """(requests, non-2xx, socket errors, wrk's output)."""
        time.sleep(1)  # the deploy's last change has reached the edge, under load
        # wrk prints its counts when interrupted; SIGINT reaches exec'd wrk itself.
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=60)
        total = re.search(r"(\d+) requests in", out)
        bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
        errors = re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
        )
        assert total is not None, out
        return (
            int(total.group(1)),
            int(bad.group(1)) if bad else 0,
            sum(int(g) for g in errors.groups()) if errors else 0,
            out,
        )


def config(edge: Edge, name: str, note: str, deploy: str) -> Path:
    path = edge.config(name, env=note)
    text = path.read_text().replace('  strategy = "rolling"\n', deploy)
    path.write_text(text)
    return path


def under_load(edge: Edge, *args: str) -> str:
    """Run a deploying CLI command with wrk going; assert nothing failed; its stdout."""
    load = Wrk(edge)
    try:
        time.sleep(1)
        out = edge.srv.cli(*args).stdout
    finally:
        count, bad, errors, report = load.stop()
    print(f"\nhangar {' '.join(args[:2])}: {count} requests, {bad} non-2xx, {errors} errors")
    assert count > 100, report
    assert (bad, errors) == (0, 0), report
    return out


def running(edge: Edge) -> dict[str, int]:
    machines = edge.srv.json("machines", "list", "--app", "hello")
    assert isinstance(machines, list)
    return {m["id"]: m["running_version"] for m in machines}


def test_no_request_fails_in_any_strategy_or_rollback(edge: Edge) -> None:
    srv = edge.srv
    srv.cli("deploy", "--config", str(config(edge, "v1.toml", "one", "")))
    for _ in range(MACHINES - 1):
        srv.cli("machines", "create", "--app", "hello")
    wait_for(
        "five machines in rotation",
        lambda: len(in_rotation(edge, "hello")) == MACHINES,
        timeout=120,
    )

    rolling = '  strategy = "rolling"\n  max_unavailable = "40%"\n'
    out = under_load(edge, "deploy", "--config", str(config(edge, "v2.toml", "two", rolling)))
    assert "Release v2 is live." in out
    assert set(running(edge).values()) == {2}

    canary = '  strategy = "canary"\n  max_unavailable = 2\n'
    out = under_load(edge, "deploy", "--config", str(config(edge, "v3.toml", "three", canary)))
    assert "Release v3 is live." in out
    assert set(running(edge).values()) == {3}

    before = set(running(edge))
    bluegreen = '  strategy = "bluegreen"\n  bluegreen_grace = "2s"\n'
    out = under_load(edge, "deploy", "--config", str(config(edge, "v4.toml", "four", bluegreen)))
    assert "Release v4 is live." in out
    after = running(edge)
    assert len(after) == MACHINES and not set(after) & before and set(after.values()) == {4}

    # Back to v3's image and configuration, as a new release, by the same strategies.
    out = under_load(edge, "releases", "rollback", "--app", "hello", "--strategy", "rolling")
    assert "Release v5 of hello created: v3's image" in out and "Release v5 is live." in out
    assert set(running(edge).values()) == {5}
    releases = srv.json("releases", "--app", "hello")
    assert isinstance(releases, list)
    latest = releases[0]
    assert (latest["version"], latest["status"], latest["rollback_of"]) == (5, "complete", 3)
    assert latest["phase"] == "released"
    (v4,) = [r for r in releases if r["version"] == 4]
    assert v4["image_digest"] and latest["image_digest"]
    (v3,) = [r for r in releases if r["version"] == 3]
    assert latest["image_digest"] == v3["image_digest"]
    # Each machine runs v3's configuration again.
    note = srv.cli(
        "machines", "exec", next(iter(running(edge))), "--app", "hello", "--", "env"
    ).stdout
    assert "RELEASE_NOTE=three" in note


def test_a_blue_green_whose_new_set_answers_5xx_switches_back(edge: Edge) -> None:
    srv = edge.srv
    srv.cli("deploy", "--config", str(config(edge, "v1.toml", "one", "")))
    srv.cli("machines", "create", "--app", "hello")
    wait_for("two machines in rotation", lambda: len(in_rotation(edge, "hello")) == 2)
    old = set(running(edge))
    # v2 passes its check on :8080, but the edge sends requests to :8081, where
    # nothing listens: every request after the switch fails.
    broken = config(edge, "v2.toml", "two", "")
    text = broken.read_text()
    start, end = text.index("  [[http_service.checks]]"), text.index("[deploy]")
    text = text[:start] + text[end:]
    text = text.replace("internal_port = 8080", "internal_port = 8081")
    text = text.replace(
        "[deploy]\n",
        '[deploy]\n  strategy = "bluegreen"\n  bluegreen_grace = "1s"\n'
        '  max_error_rate = 0.2\n  error_window = "60s"\n',
    )
    text += (
        '[checks.alive]\n  type = "http"\n  port = 8080\n  path = "/healthz"\n'
        '  interval = "0.5s"\n  grace_period = "0.2s"\n'
    )
    broken.write_text(text)
    srv.cli("deploy", "--config", str(broken), "--detach")
    ca = (srv.data_dir / "ca.crt").read_text()
    statuses: list[int] = []

    def finished() -> dict[str, object] | None:
        statuses.append(fetch(edge, APP_HOST, ca)[0])
        release = srv.json("releases", "--app", "hello")[0]  # type: ignore[index]
        return release if release["status"] in ("complete", "failed") else None  # type: ignore[index,return-value]

    release = wait_for("the blue-green to end", finished, timeout=120)
    assert isinstance(release, dict)
    assert release["status"] == "failed", release
    assert "5xx after the switch" in release["reason"]
    assert release["reason"].endswith("switched back to v1; the new machines were removed")
    assert 503 in statuses  # the new set did serve, and failed
    assert set(running(edge)) == old and set(running(edge).values()) == {1}
    # The old set serves again.
    wait_for("v1 serving", lambda: all(fetch(edge, APP_HOST, ca)[0] == 200 for _ in range(10)))

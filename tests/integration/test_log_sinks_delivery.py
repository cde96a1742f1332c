"""Log sinks' delivery guarantees: the audit trail shipped in order, per
organization, and nothing lost when the shipping process is killed.

The crash test runs the server's log shipper in a separate process on the
same data directory and store, and kills it with SIGKILL while a push is in
flight (the receiver has the batch, the shipper never hears back) and at
other moments. Machines' output comes through the control plane's store of
shipped output, as a joined host's does. The receiver is a fake Loki
(pytest-httpserver); duplicates are allowed, counted and reported.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pytest_httpserver import HTTPServer
from sqlalchemy import select
from werkzeug import Request, Response

from hangar.audit.log import chain_for
from hangar.controlplane.logshipper import LogShipper
from hangar.controlplane.logstore import LogStore
from hangar.controlplane.state import ControlPlane
from hangar.store.tables import App, AuditEvent, Org
from tests.conftest import Installation, bearer, mint_token
from tests.integration.test_log_sinks import (
    Clock,
    Loki,
    add,
    clock,
    events,
    installation,
    one_machine,
    shipper,
)

__all__ = ["clock", "installation", "one_machine", "shipper"]  # the fixtures, shared


@pytest.fixture
def sink_buffer_bytes() -> int:
    """The buffer holds everything these tests write."""
    return 8 << 20


T0 = dt.datetime(2026, 2, 1, 8, 0, tzinfo=dt.UTC)


def chain(cp: ControlPlane, org: str) -> list[AuditEvent]:
    with cp.db.read() as session:
        org_id = session.execute(select(Org.id).where(Org.name == org)).scalar_one()
        return list(
            session.execute(
                select(AuditEvent)
                .where(AuditEvent.chain == chain_for(org_id))
                .order_by(AuditEvent.seq)
            ).scalars()
        )


def test_the_audit_trail_reaches_the_sink_in_order_through_an_outage_and_only_its_own(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    httpserver: HTTPServer,
    clock: Clock,
    shipper: LogShipper,
) -> None:
    loki = Loki(httpserver)
    h = installation.headers
    sink = add(api, installation, loki.url).json()
    shipper.round()
    assert [a["action"] for a in loki.audit] == ["logs.sink.add"]
    loki.status = 503
    # Another organization's events must never reach this one's sink.
    assert api.post("/v1/orgs", headers=h, json={"name": "globex"}).status_code == 201
    api.post("/v1/orgs/globex/members", headers=h, json={"email": "g@example.com", "role": "admin"})
    globex = bearer(mint_token(control_plane, "g@example.com", kind="org", org="globex"))
    for n in range(3):
        assert (
            api.post("/v1/apps", headers=h, json={"name": f"app{n}", "org": "acme"}).status_code
            == 201
        )
        api.post("/v1/apps", headers=globex, json={"name": f"g{n}", "org": "globex"})
        shipper.round()
        clock.now += 120
    other = add(api, installation, loki.url).json()
    api.delete(f"/v1/orgs/acme/log-sinks/{other['id']}", headers=h)
    loki.status = 204
    clock.now += 120
    for _ in range(2):
        shipper.round()
    acme = chain(control_plane, "acme")
    added = next(e.seq for e in acme if e.target == sink["id"])
    expected = [(e.seq, e.action, e.hash) for e in acme if e.seq >= added]
    shipped = [(a["seq"], a["action"], a["hash"]) for a in loki.audit]
    assert shipped == expected  # each once, in the chain's order, nothing missing
    assert [a for a in shipped if a[1] == "app.create"]  # the outage's events came through
    theirs = {e.hash for e in chain(control_plane, "globex")}
    assert len(theirs) > 1 and not theirs & {a["hash"] for a in loki.audit}


SHIPPER = """
import sys, time
from hangar.config.settings import ServerSettings
from hangar.controlplane.logshipper import LogShipper
from hangar.controlplane.state import ControlPlane

cp = ControlPlane.open(ServerSettings.model_validate_json(sys.argv[1]), migrate=False)
shipper = LogShipper(cp, interval=0.05)
print("ready", flush=True)
while True:
    shipper.round()
    time.sleep(0.05)
"""


class Receiver(Loki):
    """A Loki that can hold one push: it has the batch, the shipper hears nothing."""

    def __init__(self, server: HTTPServer) -> None:
        self.hold = False
        self.holding = threading.Event()
        self.release = threading.Event()
        self.pushes = threading.Semaphore(0)
        super().__init__(server)

    def handle(self, request: Request) -> Response:
        if self.hold:
            self.hold = False
            self.holding.set()
            self.release.wait(60)
        answer = super().handle(request)  # taken, whether or not the shipper lives to hear
        self.pushes.release()
        return answer


STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_shipper_left() -> Iterator[None]:
    """Whatever happens in a test, no shipper process it started outlives it."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def ship(installation: Installation) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", SHIPPER, installation.settings.model_dump_json()],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    STARTED.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


def test_a_shipper_killed_mid_shipment_loses_nothing(
    api: TestClient,
    installation: Installation,
    control_plane: ControlPlane,
    one_machine: tuple[App, str, str],
    httpserver: HTTPServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, machine_id, _ = one_machine
    store = LogStore(installation.settings.data_dir / "logs")
    written = 0

    def write(count: int) -> None:
        nonlocal written
        store.append(
            machine_id,
            [
                {
                    "ts": (T0 + dt.timedelta(milliseconds=n)).isoformat(),
                    "stream": "stdout",
                    "line": f"line {n}",
                }
                for n in range(written, written + count)
            ],
        )
        written += count

    receiver = Receiver(httpserver)
    sink = add(api, installation, receiver.url).json()
    write(700)  # more than one batch of 500

    # 1. Killed while a push is in flight: the receiver took the batch.
    receiver.hold = True
    proc = ship(installation)
    assert receiver.holding.wait(60), "the shipper never pushed"
    write(150)
    kill(proc)
    receiver.release.set()
    assert receiver.pushes.acquire(timeout=60)  # the held push is taken, unheard
    held = len(receiver.lines)
    assert held > 0

    # 2. Killed at whatever point it has reached, after some pushes and between writes.
    for pause in (0.0, 0.01, 0.05, 0.2):
        write(100)
        proc = ship(installation)
        assert receiver.pushes.acquire(timeout=60), "the shipper never pushed"
        time.sleep(pause)  # somewhere further on: acking, reading, appending, pushing
        kill(proc)

    # 3. A last run, left to finish.
    proc = ship(installation)
    try:
        deadline = time.monotonic() + 120
        while len(set(receiver.lines)) < written and time.monotonic() < deadline:
            receiver.pushes.acquire(timeout=1)
    finally:
        kill(proc)

    got = receiver.lines
    assert set(got) == {f"line {n}" for n in range(written)}  # nothing lost
    firsts = [int(line.split()[1]) for line in dict.fromkeys(got)]
    assert firsts == sorted(firsts)  # first arrivals in order
    assert got[:held].count(got[0]) == 1 and got.count(got[0]) >= 2  # the held batch, again
    assert events(control_plane, "logs.sink.dropped") == []
    audit = [a for a in receiver.audit if a["target"] == sink["id"]]
    assert audit and audit[0]["action"] == "logs.sink.add"
    with capsys.disabled():
        print(
            f"\n[sigkill] lines {written}, received {len(got)},"
            f" duplicates {len(got) - len(set(got))}"
        )

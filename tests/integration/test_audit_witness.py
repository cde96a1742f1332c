"""Cutting the audit trail is caught by a witness the database's owner cannot rewrite.

The attacker here owns the database file: they delete the newest events and
the checkpoints that name them, or an organization's whole chain with its
checkpoints and head, straight through sqlite. What is left verifies on its
own; against the witness it must not, and the failure names the chain.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hangar.api.app import create_app
from hangar.audit.chain import SYSTEM_CHAIN
from hangar.audit.log import AuditContext
from hangar.audit.witness import WITNESS_TAG
from hangar.cli.main import run
from hangar.config.settings import ServerSettings, load_settings
from hangar.controlplane.state import ControlPlane
from hangar.errors import ConfigError
from tests.conftest import Installation, make_installation

CTX = AuditContext(actor="t@example.com", token_id=None, request_id=None, client_addr=None)


def _install(tmp_path: Path, *witness: str, every: int = 4) -> Installation:
    return make_installation(
        tmp_path / "data", "", audit_witness=list(witness), audit_checkpoint_every=every
    )


@pytest.fixture
def witness_file(tmp_path: Path) -> Path:
    (tmp_path / "witness").mkdir()
    return tmp_path / "witness" / "checkpoints.log"


@pytest.fixture
def busy(tmp_path: Path, witness_file: Path) -> Iterator[tuple[ControlPlane, Installation]]:
    """acme with a few dozen events, globex with some; every chain checkpointed, witnessed."""
    inst = _install(tmp_path, f"file://{witness_file}")
    cp = ControlPlane.open(inst.settings)
    with TestClient(create_app(cp), raise_server_exceptions=False) as api:
        h = inst.headers
        assert api.post("/v1/orgs", headers=h, json={"name": "globex"}).status_code == 201
        for i in range(9):
            assert (
                api.post("/v1/apps", headers=h, json={"name": f"app{i}", "org": "acme"}).status_code
                == 201
            )
            body = {"name": f"g{i}", "org": "globex"}
            assert api.post("/v1/apps", headers=h, json=body).status_code == 201
        api.get("/v1/apps", headers={"Authorization": "Bearer nope"})  # the system chain
    # Shutting down signed every chain that moved.
    yield cp, inst
    cp.close()


def _verify(inst: Installation, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = run(["audit", "verify", "--data-dir", str(inst.settings.data_dir), *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def _org_id(db: sqlite3.Connection, name: str) -> str:
    return str(db.execute("SELECT id FROM orgs WHERE name = ?", (name,)).fetchone()[0])


def _attack(inst: Installation) -> sqlite3.Connection:
    return sqlite3.connect(inst.settings.data_dir / "hangar.db", isolation_level=None)


def _witnessed(path: Path) -> dict[str, int]:
    newest: dict[str, int] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        newest[record["chain"]] = max(newest.get(record["chain"], 0), record["seq"])
    return newest


def _cut(db: sqlite3.Connection, chain: str, keep: int) -> None:
    """Delete events after ``keep`` and their checkpoints, and tidy the head: a clean cut."""
    db.execute("DELETE FROM audit_events WHERE chain = ? AND seq > ?", (chain, keep))
    db.execute("DELETE FROM audit_checkpoints WHERE chain = ? AND seq > ?", (chain, keep))
    row = db.execute(
        "SELECT hash FROM audit_events WHERE chain = ? AND seq = ?", (chain, keep)
    ).fetchone()
    db.execute(
        "UPDATE audit_heads SET seq = ?, hash = ?, checkpointed_seq = "
        "(SELECT COALESCE(MAX(seq), 0) FROM audit_checkpoints WHERE chain = ?) WHERE chain = ?",
        (keep, row[0] if row else "0" * 64, chain, chain),
    )


def test_untouched_trail_verifies_against_its_witness(
    busy: tuple[ControlPlane, Installation], witness_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, inst = busy
    lines = witness_file.read_text().splitlines()
    assert lines and all(WITNESS_TAG in line for line in lines)
    seen = _witnessed(witness_file)
    with _attack(inst) as db:
        assert set(seen) == {_org_id(db, "acme"), _org_id(db, "globex"), SYSTEM_CHAIN}
    code, out = _verify(inst, capsys, "--witness", str(witness_file))
    assert code == 0, out
    assert "(organization acme)" in out and "(organization globex)" in out
    assert "witnessed" in out


def test_cutting_the_newest_events_and_their_checkpoints_is_caught(
    busy: tuple[ControlPlane, Installation], witness_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, inst = busy
    with _attack(inst) as db:
        acme = _org_id(db, "acme")
    newest = _witnessed(witness_file)[acme]
    # Every cut below the newest witnessed head: one event, then ever more.
    for keep in (newest - 1, newest - 3, newest // 2, 1, 0):
        with _attack(inst) as db:
            _cut(db, acme, keep)
        code, out = _verify(inst, capsys)
        assert code == 0, f"without the witness the cut to {keep} is invisible: {out}"
        code, out = _verify(inst, capsys, "--witness", str(witness_file))
        assert code == 1, out
        failed = [line for line in out.splitlines() if line.startswith("FAILED")]
        assert failed and all(
            f"chain {acme}: " in line and "(organization acme)" in line for line in failed
        ), out
        assert f"reach event {newest}" in out
    # With the witness named in the server's settings, --data-dir alone holds to it.
    (inst.settings.data_dir / "server.toml").write_text(
        f'audit_witness = ["file://{witness_file}"]\n'
    )
    code, out = _verify(inst, capsys)
    assert code == 1 and f"checking against the witness {witness_file}" in out


def test_deleting_a_whole_chain_with_its_checkpoints_is_caught_by_name(
    busy: tuple[ControlPlane, Installation], witness_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, inst = busy
    with _attack(inst) as db:
        globex = _org_id(db, "globex")
        for table in ("audit_events", "audit_checkpoints", "audit_heads"):
            db.execute(f"DELETE FROM {table} WHERE chain = ?", (globex,))  # noqa: S608
    assert _verify(inst, capsys)[0] == 0
    code, out = _verify(inst, capsys, "--witness", str(witness_file), "--json")
    assert code == 1
    (bad,) = [r for r in json.loads(out[: out.rindex("]") + 1]) if not r["ok"]]
    assert bad["chain"] == globex and bad["name"] == "globex"
    assert "missing" in bad["reason"]
    # The system chain too: the installation's own trail is held the same way.
    with _attack(inst) as db:
        for table in ("audit_events", "audit_checkpoints", "audit_heads"):
            db.execute(f"DELETE FROM {table} WHERE chain = ?", (SYSTEM_CHAIN,))  # noqa: S608
    code, out = _verify(inst, capsys, "--witness", str(witness_file))
    assert code == 1 and f"FAILED  chain {SYSTEM_CHAIN}: " in out


def test_a_forged_witness_line_is_reported_not_believed(
    busy: tuple[ControlPlane, Installation], witness_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, inst = busy
    honest = witness_file.read_text()
    records = [json.loads(line) for line in honest.splitlines()]
    with _attack(inst) as db:
        acme = _org_id(db, "acme")
    real = next(r for r in records if r["chain"] == acme)
    forgeries = [
        {**real, "seq": real["seq"] + 1000},  # claims a longer chain: would accuse falsely
        {**real, "head_hash": "ab" * 32},
        {**real, "signature": "00" * 64},
        {**real, "chain": "org_invented"},
        {**real, "signature": "not hex"},
    ]
    number = len(records) + 1
    for forged in forgeries:
        witness_file.write_text(honest + json.dumps(forged) + "\n")
        code, out = _verify(inst, capsys, "--witness", str(witness_file))
        assert code == 1, out
        (failed,) = [line for line in out.splitlines() if line.startswith("FAILED")]
        assert f"line {number}" in failed and "bad signature" in failed, out
        assert "removed" not in out and "missing" not in out
    witness_file.write_text(honest + f'{{"witness": "{WITNESS_TAG}", "chain": 5}}\n')
    code, out = _verify(inst, capsys, "--witness", str(witness_file))
    assert code == 1 and "unreadable" in out


def test_a_rolled_back_change_is_never_witnessed(tmp_path: Path, witness_file: Path) -> None:
    inst = _install(tmp_path, f"file://{witness_file}", every=1)
    cp = ControlPlane.open(inst.settings)
    try:
        before = witness_file.read_text()
        with pytest.raises(RuntimeError), cp.db.write() as session:
            cp.audit.record(session, CTX, org_id=None, action="t.x", target="t")
            raise RuntimeError("the change fails after its event")
        assert witness_file.read_text() == before
        with cp.db.write() as session:
            cp.audit.record(session, CTX, org_id=None, action="t.y", target="t")
        assert len(witness_file.read_text().splitlines()) == len(before.splitlines()) + 1
    finally:
        cp.close()


def test_an_unwritable_witness_is_logged_and_catches_up(
    tmp_path: Path, witness_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inst = _install(tmp_path, f"file://{witness_file}", every=1)
    cp = ControlPlane.open(inst.settings)
    try:
        witness_file.unlink()
        witness_file.mkdir()  # not a file any more: every write fails
        with caplog.at_level(logging.ERROR, logger="hangar.audit"), cp.db.write() as session:
            cp.audit.record(session, CTX, org_id=None, action="t.x", target="t")
        assert "missed the checkpoint of chain system" in caplog.text
        witness_file.rmdir()
        with caplog.at_level(logging.WARNING, logger="hangar.audit"), cp.db.write() as session:
            cp.audit.record(session, CTX, org_id=None, action="t.y", target="t")
        assert "caught up on chain system" in caplog.text
        assert len(witness_file.read_text().splitlines()) == 1
    finally:
        cp.close()


@pytest.mark.parametrize(
    "url",
    [
        "file://{data}/witness.log",  # rewritten with the database
        "file://{data}",
        "file:relative.log",
        "https://collector.example/witness",
        "syslog+tcp://127.0.0.1:514",
        "syslog+udp://127.0.0.1",
        "syslog+udp://127.0.0.1:99999",
        "file:///tmp/../{data}/w.log",
    ],
)
def test_a_witness_the_database_owner_rewrites_or_that_cannot_work_is_refused(
    tmp_path: Path, url: str
) -> None:
    data = tmp_path / "data"
    with pytest.raises(ConfigError, match="audit_witness"):
        load_settings(
            ServerSettings,
            environ={},
            flags={"data_dir": data, "audit_witness": [url.format(data=data)]},
        )


class _Collector:
    """A syslog receiver on a datagram socket this test owns."""

    def __init__(self, family: int, address: Any) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except TimeoutError:
                continue

    def close(self) -> list[str]:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return self.messages


RFC5424 = re.compile(
    r"^<109>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z \S+ hangar \d+ audit-checkpoint - (\{.*\})$"
)


@pytest.mark.parametrize("transport", ["udp", "unix"])
def test_syslog_witness_sends_rfc5424_that_verify_reads(
    tmp_path: Path, transport: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if transport == "udp":
        collector = _Collector(socket.AF_INET, ("127.0.0.1", 0))
        url = f"syslog+udp://127.0.0.1:{collector.sock.getsockname()[1]}"
    else:
        path = tmp_path / "syslog.sock"
        collector = _Collector(socket.AF_UNIX, str(path))
        url = f"syslog+unix://{path}"
    inst = _install(tmp_path, url, every=3)
    cp = ControlPlane.open(inst.settings)
    with TestClient(create_app(cp), raise_server_exceptions=False) as api:
        for i in range(7):
            assert api.post("/v1/apps", headers=inst.headers, json={"name": f"a{i}"}).is_success
    cp.close()
    # The shutdown checkpoint was sent after the last event; wait for it to arrive.
    with _attack(inst) as db:
        acme = _org_id(db, "acme")
        head = db.execute("SELECT seq FROM audit_heads WHERE chain = ?", (acme,)).fetchone()[0]
    deadline = threading.Event()
    for _ in range(100):
        if any(f'"seq":{head}' in m and acme in m for m in collector.messages):
            break
        deadline.wait(0.05)
    messages = collector.close()
    assert messages and all(RFC5424.match(m) for m in messages), messages
    received = tmp_path / "syslog.log"
    # As a collector writes them: its own prefix, then the message.
    received.write_text("".join(f"Dec  2 01:00:00 host {m}\n" for m in messages) + "other line\n")
    code, out = _verify(inst, capsys, "--witness", str(received))
    assert code == 0, out
    with _attack(inst) as db:
        _cut(db, acme, head - 1)
    code, out = _verify(inst, capsys, "--witness", str(received))
    assert code == 1 and f"FAILED  chain {acme}: " in out and "(organization acme)" in out


def test_the_witness_file_is_appended_never_rewritten(tmp_path: Path, witness_file: Path) -> None:
    """Lines already there stay byte for byte; the file is only ever opened to append."""
    witness_file.write_text("kept as it was\n")
    os.chmod(witness_file, 0o600)
    inst = _install(tmp_path, f"file://{witness_file}", every=1)
    cp = ControlPlane.open(inst.settings)
    try:
        with cp.db.write() as session:
            cp.audit.record(session, CTX, org_id=None, action="t.x", target="t")
    finally:
        cp.close()
    text = witness_file.read_text()
    assert text.startswith("kept as it was\n") and text.count("\n") >= 2
    link = tmp_path / "witness" / "link.log"
    link.symlink_to(tmp_path / "elsewhere.log")
    with pytest.raises(ConfigError, match="cannot open the audit witness"):
        make_installation(tmp_path / "data2", "", audit_witness=[f"file://{link}"])
    assert not (tmp_path / "elsewhere.log").exists()


def test_the_server_loop_checkpoints_a_moved_chain_when_its_time_comes(
    tmp_path: Path, witness_file: Path
) -> None:
    """A few events, far fewer than audit_checkpoint_every, are still witnessed in time."""
    from hangar.server.serve import Loops

    inst = _install(tmp_path, f"file://{witness_file}", every=1000)
    cp = ControlPlane.open(inst.settings)
    try:
        with cp.db.write() as session:
            cp.audit.record(session, CTX, org_id=None, action="t.x", target="t")
        before = witness_file.read_text()
        loops = Loops(cp, None)
        loops.round()
        assert witness_file.read_text() == before  # not yet due
        loops._next_checkpoint = 0  # the time has come
        loops.round()
        added = witness_file.read_text()[len(before) :].splitlines()
        assert SYSTEM_CHAIN in {json.loads(line)["chain"] for line in added}
        loops._next_checkpoint = 0
        loops.round()  # nothing moved since: nothing to sign
        assert len(witness_file.read_text().splitlines()) == len(before.splitlines()) + len(added)
    finally:
        cp.close()


def test_verify_through_the_api_holds_one_chain_to_the_witness(
    busy: tuple[ControlPlane, Installation],
    witness_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The events come from the server, the witness from the auditor: a cut shows."""
    import hangar.cli.audit as audit_cli
    from hangar.cli.client import Client

    _, inst = busy
    with _attack(inst) as db:
        acme, globex = _org_id(db, "acme"), _org_id(db, "globex")
        _cut(db, acme, _witnessed(witness_file)[acme] - 2)
        for table in ("audit_events", "audit_checkpoints", "audit_heads"):
            db.execute(f"DELETE FROM {table} WHERE chain = ?", (globex,))  # noqa: S608
    cp = ControlPlane.open(inst.settings)
    try:
        with TestClient(create_app(cp), headers=inst.headers) as http:
            api = Client.__new__(Client)
            api._http = http
            monkeypatch.setattr(audit_cli, "client", lambda _ctx: api)
            system = run(["audit", "verify", "--system", "--witness", str(witness_file)])
            assert system == 0, capsys.readouterr()
            capsys.readouterr()
            code = run(["audit", "verify", "--org", "acme", "--witness", str(witness_file)])
            out = capsys.readouterr().out
            assert code == 1 and f"FAILED  chain {acme}: " in out and "were removed" in out
            code = run(["audit", "verify", "--org", "globex", "--witness", str(witness_file)])
            out = capsys.readouterr().out
            assert code == 1 and f"FAILED  chain {globex}: " in out and "missing" in out
    finally:
        cp.close()

"""Every benchmark runs end to end at its tiny size (``--quick``) and prints its table.

These check that the benchmarks still run and still print what they claim,
row by row; never the figures themselves.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import needs_root

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"
N = r"[\d.]+"  # a figure: its value is not what these tests check


def run_quick(script: str, timeout: float) -> str:
    """The benchmark's output at ``--quick`` size, run by this virtualenv's Python."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, (
        f"{script} exited {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    )
    return done.stdout


def has_line(out: str, pattern: str) -> None:
    assert re.search(pattern, out, re.MULTILINE), f"no line matching {pattern!r} in:\n{out}"


def test_no_benchmark_file_shadows_an_importable_module() -> None:
    # A script's directory is first on sys.path: benchmarks/secrets.py once
    # replaced the standard library's `secrets` for everything the script imported.
    scripts = sorted(BENCHMARKS.glob("*.py"))
    assert scripts
    for path in scripts:
        assert importlib.util.find_spec(path.stem) is None, (
            f"benchmarks/{path.name} shadows the importable module {path.stem!r}: rename it"
        )


@pytest.mark.slow
def test_api_throughput_prints_its_ratio_table() -> None:
    out = run_quick("api_throughput.py", timeout=180)
    has_line(out, r"^\s+bare FastAPI\s+Hangar\s+ratio\s+target$")
    has_line(out, rf"^GET  /v1/apps \(auth\)\s+{N}/s\s+{N}/s\s+{N}\s+>= 1500/s$")
    has_line(out, rf"^POST /v1/apps \(audit\)\s+{N}/s\s+{N}/s\s+{N}\s+>= 300/s$")
    has_line(out, r"^p50 latency: GET .* 2 connections, 1s each")


@pytest.mark.slow
def test_secrets_at_scale_prints_each_kek_provider_against_raw_aes_gcm() -> None:
    out = run_quick("secrets_at_scale.py", timeout=180)
    labels = ["KEK in a 0600 file"]
    if shutil.which("softhsm2-util"):
        labels.append(r"KEK in SoftHSM \(PKCS#11\)")
    for label in labels:
        has_line(out, rf"^{label}:$")
    set_rows = re.findall(
        rf"^  set 6 secrets in 3 apps: {N}s, {N} us/secret; raw AES-GCM {N} us \(ratio {N}x\)$",
        out,
        re.MULTILINE,
    )
    rotate_rows = re.findall(
        rf"^  rotate the KEK, \d+ wrapped keys re-wrapped: {N}s, {N} us/key; "
        rf"raw AES-GCM {N} us \(ratio {N}x\)$",
        out,
        re.MULTILINE,
    )
    assert len(set_rows) == len(rotate_rows) == len(labels), out


@pytest.mark.slow
@needs_root
def test_machine_start_prints_hangar_against_raw_runc() -> None:
    out = run_quick("machine_start.py", timeout=300)
    has_line(out, r"^machine start over 2 machines")
    has_line(out, rf"^  raw runc run -> first HTTP byte\s+{N}ms\s+{N}ms$")
    has_line(out, rf"^  Hangar API create -> check passing\s+{N}ms\s+{N}ms$")
    has_line(out, rf"^  ratio \(p50\) {N}\s")
    has_line(out, rf"^rolling deploy of 2 machines .*: {N} s total, {N} ms per machine$")
    has_line(out, rf"^  per machine / raw runc start \(p50\): {N}\s")
    # Every request through the edge answered while the machines were replaced.
    has_line(out, rf"^  requests through the edge during it: {N} answered 200, 0 failed$")


@pytest.mark.slow
@needs_root
def test_edge_throughput_prints_the_backend_rate_headroom_and_ratios() -> None:
    out = run_quick("edge_throughput.py", timeout=300)
    has_line(
        out, r"^\s+req/s\s+p50 ms\s+p99 ms\s+ratio\s+errors\s+wrk CPU\s+proxy CPU\s+backend CPU$"
    )
    # Every request answered 2xx (errors 0): otherwise the rates measure failures.
    has_line(out, rf"^backend direct \(no proxy\)\s+{N}\s+{N}\s+{N}\s+0\s+{N}%\s+{N}%$")
    cpu = rf"{N}%\s+{N}%\s+{N}%"  # wrk, proxy, backend
    has_line(out, rf"^Hangar's edge\s+{N}\s+{N}\s+{N}\s+{N}\s+0\s+{cpu}$")
    has_line(out, rf"^hand-written HAProxy\s+{N}\s+{N}\s+{N}\s+1\.00\s+0\s+{cpu}$")
    has_line(out, rf"^Caddy\s+{N}\s+{N}\s+{N}\s+{N}\s+0\s+{cpu}$")
    has_line(out, r"^CPU: share of one core over each run")
    has_line(out, rf"^backend headroom: {N}x Hangar's edge \(needs >= 5x\), {N}x the fastest")
    has_line(out, rf"^the backend machine used at most {N}% of a core behind a proxy")
    has_line(out, rf"^backend capacity: {N} req/s per core it uses \({N}x Hangar's edge with one")
    has_line(out, rf"^load generator: wrk used at most {N}% of its one thread's CPU")
    has_line(out, r"^Routing change with 20 apps: first start ")
    assert "some requests failed" not in out


@pytest.mark.slow
@needs_root
def test_network_paths_prints_each_path_against_its_baseline() -> None:
    out = run_quick("network_paths.py", timeout=300)
    has_line(out, r"^  path\s+Gbit/s\s+ratio  against$")
    has_line(out, rf"^  plain veth pair, no filtering\s+{N}\s+1\.00  itself$")
    has_line(out, rf"^  machine -> machine, one host \(Hangar\)\s+{N}\s+{N}  plain veth$")
    has_line(out, rf"^  host -> host, WireGuard by hand \(wireguard-go\)\s+{N}\s+{N}  plain veth$")
    has_line(
        out, rf"^  host -> host, Hangar's mesh \(wireguard-go\)\s+{N}\s+{N}  WireGuard by hand$"
    )
    has_line(out, r"^nftables table for 20 machines: first load \d+ ms, a change \d+ ms")


@pytest.mark.slow
def test_telemetry_prints_its_ratio_table() -> None:
    out = run_quick("telemetry.py", timeout=180)
    has_line(out, r"^\s+metrics off\s+metrics on\s+ratio\s+target$")
    has_line(out, rf"^GET  /v1/apps \(auth\)\s+{N}/s\s+{N}/s\s+{N}\s+>= 0.95$")
    has_line(out, r"^\s+to a file\s+to a sink\s+ratio$")
    has_line(out, rf"^log lines/s\s+{N}/s\s+{N}/s\s+{N}$")


@pytest.mark.slow
def test_identity_prints_its_ratio_table() -> None:
    out = run_quick("identity.py", timeout=300)
    has_line(out, r"^\s+API token\s+session\s+ratio\s+target$")
    has_line(out, rf"^GET /v1/whoami\s+{N}/s\s+{N}/s\s+{N}\s+<= 1.2$")
    has_line(out, rf"^authenticate\s+{N}/s\s+{N}/s\s+{N}\s+<= 1.2$")
    has_line(out, rf"^\s+{N}ms\s+{N}ms$")


@pytest.mark.slow
@needs_root
@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed (make deps)")
def test_volumes_prints_each_target_against_a_plain_directory() -> None:
    out = run_quick("volumes.py", timeout=600)
    has_line(out, r"^  job\s+target\s+MB/s\s+IOPS\s+ratio$")
    for job in ("sequential write", "sequential read", "random write 4k", "random read 4k"):
        has_line(out, rf"^  {job}\s+plain directory\s+{N}\s+(-|{N})\s+1\.00$")
        has_line(out, rf"^  {job}\s+ext4 loop file\s+{N}\s+(-|{N})\s+{N}$")
        has_line(out, rf"^  {job}\s+encrypted \((gocryptfs|luks2)\)\s+{N}\s+(-|{N})\s+{N}$")
    # Snapshot, backup and restore of the same size, each against its baseline.
    for what, baseline in (
        ("snapshot", "cp -a"),
        ("backup", "restic backup"),
        ("restore", "restic restore"),
    ):
        has_line(out, rf"^  {what} {N} MiB \(vs {baseline}\)\s+{N} s vs {N} s, ratio {N}$")

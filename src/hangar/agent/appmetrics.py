"""Each machine's figures for its organization: cgroup usage, and the app's own metrics.

Every ``INTERVAL`` seconds, for each running machine on this host, the agent
reads its cgroup (CPU time, memory, processes) and, where the app declares
``[metrics]``, scrapes the machine's own endpoint over the private network.
The result is one exposition text per machine, labelled with the machine's
organization, app and id (a label of the app's own with one of those names
is kept as ``exported_<name>``), shipped up through the link. The control
plane files it under the machine as its store knows it, never by these
labels.

A scrape is a tenant's server answering: it runs off the agent's loop, a
few at a time per organization, bounded by one deadline for the whole
request and a cap on the body and on the number of samples. A machine whose
scrape fails ships its usage alone, and a ``hangar_scrape_ok 0`` sample.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hangar.agent.metrics import CGROUP_ROOT, cgroup_usage
from hangar.agent.offload import Offload
from hangar.contract.assignments import Assignment, MetricsTarget
from hangar.errors import HangarError
from hangar.net.netns import names
from hangar.net.nftables import Traffic

__all__ = ["INTERVAL", "MAX_BODY", "MAX_SAMPLES", "AppMetrics", "label_families", "scrape"]

log = logging.getLogger("hangar.agent")

INTERVAL = 15.0  # seconds between two collections of one machine
SCRAPE_SECONDS = 5.0  # one scrape, connect to last byte
MAX_BODY = 1 << 20  # bytes of exposition text taken from one machine
MAX_SAMPLES = 2000  # samples kept from one machine
MAX_TEXT = 512 << 10  # bytes shipped for one machine (the control plane's own cap)
OURS = ("org", "app", "machine")


class ScrapeError(HangarError):
    pass


def scrape(address: ipaddress.IPv6Address, target: MetricsTarget) -> str:
    """The machine's exposition text; ScrapeError if it does not answer 200 in time and size."""
    deadline = time.monotonic() + SCRAPE_SECONDS

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        return remaining

    data = b""
    try:
        with socket.create_connection((str(address), target.port), timeout=left()) as sock:
            sock.settimeout(left())
            sock.sendall(
                f"GET {target.path} HTTP/1.0\r\nHost: [{address}]:{target.port}\r\n"
                "User-Agent: hangar-metrics\r\nAccept: text/plain\r\n\r\n".encode()
            )
            while len(data) <= MAX_BODY + 65536:
                sock.settimeout(left())
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            else:
                raise ScrapeError(f"metrics larger than {MAX_BODY} bytes")
    except OSError as exc:
        raise ScrapeError(f"scrape of :{target.port}{target.path} failed: {exc}") from exc
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise ScrapeError(f"scrape of :{target.port}{target.path}: {status[1:2] or 'no answer'}")
    if len(body) > MAX_BODY:
        raise ScrapeError(f"metrics larger than {MAX_BODY} bytes")
    return body.decode("utf-8", errors="replace")


def label_families(text: str, labels: dict[str, str], *, limit: int = MAX_SAMPLES) -> list[Metric]:
    """The exposition's families with ``labels`` set on every sample (at most ``limit``).

    A sample's own label of the same name moves to ``exported_<name>``.
    ScrapeError if the text does not parse.
    """
    families: list[Metric] = []
    count = 0
    try:
        for family in text_string_to_metric_families(text):
            if family.name.startswith("hangar_"):
                family.name = "app_" + family.name  # Hangar's names are Hangar's own
            kept = []
            for sample in family.samples:
                if count >= limit:
                    break
                if not math.isfinite(sample.value) and not math.isinf(sample.value):
                    continue  # NaN
                merged = {
                    (f"exported_{k}" if k in labels else k): v for k, v in sample.labels.items()
                }
                merged.update(labels)
                name = sample.name
                if name.startswith("hangar_"):
                    name = "app_" + name
                kept.append(sample._replace(name=name, labels=merged))
                count += 1
            family.samples = kept
            if kept:
                families.append(family)
    except (ValueError, TypeError, IndexError) as exc:
        raise ScrapeError(f"metrics did not parse: {exc}") from exc
    return families


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def render(families: Iterable[Metric]) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry).decode()


_NETWORK = (
    ("hangar_machine_network_receive_bytes", "rx_bytes", "Bytes delivered to the machine."),
    ("hangar_machine_network_receive_packets", "rx_packets", "Packets delivered to the machine."),
    ("hangar_machine_network_transmit_bytes", "tx_bytes", "Bytes the machine sent."),
    ("hangar_machine_network_transmit_packets", "tx_packets", "Packets the machine sent."),
)


def _usage_text(
    machine_id: str,
    labels: dict[str, str],
    root: Path,
    scrape_ok: int | None,
    network: Traffic | None = None,
) -> str:
    lines = []
    usage = cgroup_usage(machine_id, root)
    label = ",".join(f'{k}="{v}"' for k, v in labels.items())
    if network is not None:
        for name, field, text in _NETWORK:
            lines += [
                f"# HELP {name} {text}",
                f"# TYPE {name} counter",
                f"{name}_total{{{label}}} {getattr(network, field)}",
            ]
    if usage is not None:
        if usage.cpu_seconds is not None:
            lines += [
                "# HELP hangar_machine_cpu_seconds CPU time the machine's processes have used.",
                "# TYPE hangar_machine_cpu_seconds counter",
                f"hangar_machine_cpu_seconds_total{{{label}}} {usage.cpu_seconds}",
            ]
        if usage.memory_bytes is not None:
            lines += [
                "# HELP hangar_machine_memory_bytes Memory the machine uses now.",
                "# TYPE hangar_machine_memory_bytes gauge",
                f"hangar_machine_memory_bytes{{{label}}} {usage.memory_bytes}",
            ]
        if usage.pids is not None:
            lines += [
                "# HELP hangar_machine_pids Processes and threads in the machine.",
                "# TYPE hangar_machine_pids gauge",
                f"hangar_machine_pids{{{label}}} {usage.pids}",
            ]
    if scrape_ok is not None:
        lines += [
            "# HELP hangar_scrape_ok Whether the app's own metrics answered the last scrape.",
            "# TYPE hangar_scrape_ok gauge",
            f"hangar_scrape_ok{{{label}}} {scrape_ok}",
        ]
    return "\n".join(lines) + "\n" if lines else ""


def _collect(want: Assignment, labels: dict[str, str]) -> list[Metric]:
    assert want.address is not None
    address = ipaddress.IPv6Address(want.address)
    families: list[Metric] = []
    budget = MAX_SAMPLES
    for target in want.metrics:
        found = label_families(scrape(address, target), labels, limit=budget)
        budget -= sum(len(f.samples) for f in found)
        families += found
    return families


class AppMetrics:
    """Collects each running machine's figures every ``INTERVAL``; ``take`` hands them over."""

    def __init__(
        self,
        offload: Offload | None = None,
        cgroup_root: Path = CGROUP_ROOT,
        clock: Callable[[], float] = time.time,
        network: Callable[[], Mapping[str, Traffic]] | None = None,
    ) -> None:
        self.offload = offload
        self.cgroup_root = cgroup_root
        self.clock = clock
        # Each filtered interface's traffic (the host's nftables counters), read
        # at most once a tick and only when some machine is due.
        self.network = network
        self._traffic: Mapping[str, Traffic] = {}
        self._last: dict[str, float] = {}
        self._ready: dict[str, tuple[float, str]] = {}
        self._wants: dict[str, Assignment] = {}

    def tick(self, running: Iterable[Assignment]) -> None:
        """Start what is due for these (running, started) machines; gather what finished."""
        now = self.clock()
        current = {want.machine_id: want for want in running}
        for gone in set(self._last) - set(current):
            self._last.pop(gone, None)
        self._gather()
        read = False
        for machine_id, want in current.items():
            if now - self._last.get(machine_id, -math.inf) < INTERVAL:
                continue
            if not read:
                self._read_traffic()
                read = True
            labels = {"org": want.org, "app": want.app, "machine": machine_id}
            if not want.metrics or want.address is None:
                self._ready[machine_id] = (
                    now,
                    self._usage(machine_id, labels, None),
                )
                self._last[machine_id] = now
                continue
            self._wants[machine_id] = want
            if self.offload is None:
                self._finish(machine_id, now, self._run(want, labels))
                self._last[machine_id] = now
            elif self.offload.submit(
                f"metrics:{machine_id}", want.org, partial(self._run, want, labels)
            ):
                self._last[machine_id] = now  # else: its organization's slots are full

    @staticmethod
    def _run(want: Assignment, labels: dict[str, str]) -> list[Metric] | HangarError:
        try:
            return _collect(want, labels)
        except HangarError as exc:
            return exc
        except Exception as exc:  # a tenant's answer must never stop the agent's loop
            return ScrapeError(f"metrics could not be read: {exc!r}"[:300])

    def _gather(self) -> None:
        if self.offload is None:
            return
        for key, future in self.offload.take().items():
            machine_id = key.partition(":")[2]
            self._finish(machine_id, self.clock(), future.result())

    def _finish(self, machine_id: str, now: float, result: list[Metric] | HangarError) -> None:
        want = self._wants.pop(machine_id, None)
        if want is None:
            return
        labels = {"org": want.org, "app": want.app, "machine": machine_id}
        if isinstance(result, HangarError):
            log.info("machine %s: %s", machine_id, result.message)
            text = self._usage(machine_id, labels, 0)
        else:
            text = self._usage(machine_id, labels, 1) + render(result)
            if len(text.encode()) > MAX_TEXT:
                log.info(
                    "machine %s: its metrics exceed %d bytes once labelled", machine_id, MAX_TEXT
                )
                text = self._usage(machine_id, labels, 0)
        self._ready[machine_id] = (now, text)

    def _read_traffic(self) -> None:
        if self.network is None:
            return
        try:
            self._traffic = self.network()
        except HangarError as exc:
            log.info("machines' traffic not read: %s", exc.message)
            self._traffic = {}

    def _usage(self, machine_id: str, labels: dict[str, str], scrape_ok: int | None) -> str:
        network = self._traffic.get(names(machine_id)[0]) if self._traffic else None
        return _usage_text(machine_id, labels, self.cgroup_root, scrape_ok, network)

    def take(self) -> dict[str, tuple[float, str]]:
        """Each machine's newest figures since the last call: (when, exposition text)."""
        ready, self._ready = self._ready, {}
        return ready

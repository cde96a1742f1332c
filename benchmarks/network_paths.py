"""Private networking: the cost of isolation and of the mesh, each against its baseline.

1. TCP throughput (iperf3) between two machines of one network on this host:
   through their veths, the host's IPv6 forwarding and Hangar's nftables
   table (anti-spoofing, network isolation), against two network namespaces
   joined by one plain veth pair with no filtering. The machines are real
   runc machines of the example image; iperf3 runs from the host's
   filesystem inside each machine's network namespace (the image has no
   iperf3), which is the path the machines' own traffic takes.
2. TCP throughput between two "hosts" (two network namespaces on that same
   veth underlay) through Hangar's mesh, set up by the code the agents run,
   against WireGuard set up by hand (``wg`` + ``wireguard-go``, the same
   userspace implementation the mesh uses here: no kernel module) between
   the same two namespaces. That ratio is Hangar's overhead alone.
3. The time to apply the nftables table for 1,000 machines (``nft -c`` then
   ``nft -f``, one transaction), and for the next change.

Traffic stays in namespaces made here; they, their interfaces and the
WireGuard control sockets are removed on exit, also on failure.

Run as root: `python benchmarks/network_paths.py [--seconds 5] [--quick]`.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from _support import build_example_image

TAG = f"hb{os.getpid() % 10**7}"  # unique per run; interface names stay <= 15 characters
UNDERLAY = ("10.251.0.1", "10.251.0.2", "fd99::1", "fd99::2")
HAND = (f"{TAG}wa", f"{TAG}wb")  # WireGuard by hand: interface names
MESH_HOSTS = (f"bench-{TAG}-a", f"bench-{TAG}-b")  # Hangar's mesh: host ids
WG_ENV = {**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}


def iperf(client_ns: list[str], server_ns: list[str], address: str, seconds: int) -> float:
    """Gbit/s from client to server, each argv prefix entering a network namespace."""
    server = subprocess.Popen(
        [*server_ns, "iperf3", "-s", "-1", "-B", address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        out = subprocess.run(
            [*client_ns, "iperf3", "-c", address, "-t", str(seconds), "-J"],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 30,
        ).stdout
    finally:
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


@dataclass(frozen=True)
class Pair:
    """Two network namespaces ("hosts") joined by one plain veth pair."""

    a: str
    b: str

    def run(self, ns: str, *argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            ["ip", "netns", "exec", ns, *argv], check=True, text=True, timeout=30, **kw
        )

    def iperf(self, address: str, seconds: int) -> float:
        enter = [["ip", "netns", "exec", ns] for ns in (self.a, self.b)]
        return iperf(enter[0], enter[1], address, seconds)


@contextlib.contextmanager
def namespace_pair() -> Iterator[Pair]:
    """The pair, with 10.251.0.1/2 and fd99::1/2 on the underlay; gone afterwards."""
    pair = Pair(f"{TAG}-a", f"{TAG}-b")
    try:
        for ns in (pair.a, pair.b):
            subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
        subprocess.run(
            [
                *("ip", "link", "add", f"{TAG}va", "netns", pair.a),
                *("type", "veth", "peer", f"{TAG}vb", "netns", pair.b),
            ],
            check=True,
            timeout=30,
        )
        v4a, v4b, v6a, v6b = UNDERLAY
        for ns, dev, v4, v6 in ((pair.a, f"{TAG}va", v4a, v6a), (pair.b, f"{TAG}vb", v4b, v6b)):
            pair.run(ns, "ip", "addr", "add", f"{v4}/24", "dev", dev)
            pair.run(ns, "ip", "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            pair.run(ns, "ip", "link", "set", dev, "up")
            pair.run(ns, "ip", "link", "set", "lo", "up")
        yield pair
    finally:
        for ns in (pair.a, pair.b):
            _empty(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def _empty(ns: str) -> None:
    """End every process left in ``ns`` (wireguard-go, iperf3): TERM, then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        shown = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        pids = [int(pid) for pid in shown.stdout.split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
            time.sleep(0.05)
        if not pids:
            return


def wireguard_by_hand(pair: Pair, work: Path) -> str:
    """WireGuard between the pair as a person sets it up; returns b's address through it.

    Same shape as the mesh: an address on lo, the peer's /64 routed through
    the interface, the other side's underlay address as endpoint.
    """
    keys = {}
    for name in HAND:
        private = subprocess.run(["wg", "genkey"], capture_output=True, check=True).stdout
        (work / name).write_bytes(private)
        (work / name).chmod(0o600)
        keys[name] = (
            subprocess.run(["wg", "pubkey"], input=private, capture_output=True, check=True)
            .stdout.decode()
            .strip()
        )
    sides = (
        (pair.a, HAND[0], HAND[1], UNDERLAY[1], "fd95:1::1", "fd95:2::/64"),
        (pair.b, HAND[1], HAND[0], UNDERLAY[0], "fd95:2::1", "fd95:1::/64"),
    )
    for ns, own, other, endpoint, address, theirs in sides:
        pair.run(ns, "wireguard-go", own, env=WG_ENV, capture_output=True)
        pair.run(ns, "wg", "set", own, "private-key", str(work / own), "listen-port", "51821")
        pair.run(
            ns, "wg", "set", own, "peer", keys[other], "endpoint", f"{endpoint}:51821",
            "allowed-ips", theirs,
        )  # fmt: skip
        pair.run(ns, "ip", "link", "set", own, "up")
        pair.run(ns, "ip", "-6", "addr", "add", f"{address}/128", "dev", "lo")
        pair.run(ns, "ip", "-6", "route", "add", theirs, "dev", own)
    return "fd95:2::1"


def hangar_mesh(pair: Pair, work: Path) -> str:
    """Hangar's mesh between the pair, applied by the agents' own code in each namespace."""
    from hangar.contract.mesh import Peer

    hosts = dict(zip((pair.a, pair.b), MESH_HOSTS, strict=True))

    def in_ns(ns: str, code: str) -> str:
        prelude = (
            "from pathlib import Path; from hangar.net.wireguard import Mesh; "
            "from hangar.contract.mesh import Peer; "
        )
        mesh = f"Mesh({hosts[ns]!r}, Path({str(work / ns)!r}))"
        return pair.run(
            ns, sys.executable, "-c", prelude + code.replace("MESH", mesh), capture_output=True
        ).stdout.strip()

    keys = {ns: in_ns(ns, "print(MESH.public_key())") for ns in hosts}
    sides = (
        (pair.a, pair.b, UNDERLAY[1], "fd96:1::1", "fd96:2::/64"),
        (pair.b, pair.a, UNDERLAY[0], "fd96:2::1", "fd96:1::/64"),
    )
    for ns, other, endpoint, address, theirs in sides:
        peer = Peer("other", keys[other], f"{endpoint}:51820", (theirs,))
        in_ns(ns, f"MESH.apply([Peer(*{tuple(peer.__dict__.values())!r})])")
        pair.run(ns, "ip", "-6", "addr", "add", f"{address}/128", "dev", "lo")
    return "fd96:2::1"


def host_paths(seconds: int, rounds: int) -> dict[str, float]:
    """Gbit/s between the two namespaces: plain underlay, WireGuard by hand, Hangar's mesh."""
    from hangar.net.wireguard import interface_name

    work = Path(tempfile.mkdtemp(prefix="hangar-bench-mesh-"))
    runs: dict[str, list[float]] = {"plain": [], "wireguard": [], "mesh": []}
    try:
        with namespace_pair() as pair:
            by_hand = wireguard_by_hand(pair, work)
            mesh = hangar_mesh(pair, work)
            for _ in range(rounds):  # interleaved, so a noisy moment does not fall on one only
                runs["plain"].append(pair.iperf(UNDERLAY[3], seconds))
                runs["wireguard"].append(pair.iperf(by_hand, seconds))
                runs["mesh"].append(pair.iperf(mesh, seconds))
    finally:
        # wireguard-go removes its control socket when it ends well; if not, here.
        for interface in (*HAND, *(interface_name(host) for host in MESH_HOSTS)):
            Path(f"/var/run/wireguard/{interface}.sock").unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return {name: statistics.mean(rates) for name, rates in runs.items()}


def machines_path(seconds: int, rounds: int) -> float:
    """Gbit/s between two machines of one network on this host, through Hangar's table."""
    from hangar.agent.reconciler import Reconciler
    from hangar.agent.runtimes.runc import RuncRuntime
    from hangar.agent.service import Agent
    from hangar.contract.assignments import Assignment, MachineStatus
    from hangar.domain.addressing import host_slice, machine_address, network_prefix
    from hangar.images.store import ImageStore
    from hangar.net.nftables import Firewall, table_name

    class NoLink:
        def assignments(self, wait: float) -> list[Assignment]:
            return []

        def report(self, statuses: dict[str, MachineStatus], errors: dict[str, str]) -> None:
            pass

    base = Path(tempfile.mkdtemp(prefix="hangar-bench-net-", dir="/var/tmp"))
    base.chmod(0o711)
    build_example_image(base / "hello")
    runtime = RuncRuntime(base / "state", base / "bundles")
    reconciler = Reconciler(runtime, ImageStore(base / "images"), base / "agent")
    agent = Agent(NoLink(), reconciler, "bench-host", firewall=Firewall(base / "nft"))  # type: ignore[arg-type]
    net = network_prefix(ipaddress.IPv6Network("fd98:9898::/32"), 1)
    wanted = [
        Assignment(
            machine_id=f"bench-{i}",
            app="bench",
            version=1,
            state="started",
            image=f"oci:{base / 'hello'}:latest",
            memory_mb=256,
            address=str(machine_address(host_slice(net, 1), i + 2)),
        )
        for i in range(2)
    ]
    try:
        agent.apply_firewall(wanted)
        for _ in range(40):
            if not reconciler.reconcile(wanted, time.time()):
                break
            time.sleep(0.2)
        pids = [runtime.state(w.machine_id).pid for w in wanted]
        assert all(pids), "machines did not start"
        enter = [["nsenter", "-t", str(pid), "-n"] for pid in pids]
        assert wanted[1].address is not None
        return statistics.mean(
            iperf(enter[0], enter[1], wanted[1].address, seconds) for _ in range(rounds)
        )
    finally:
        for w in wanted:
            runtime.remove(w.machine_id)
        Firewall(base / "nft").remove(table_name("bench-host"))
        subprocess.run(["umount", str(base / "bundles")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def nft_apply(count: int) -> tuple[float, float]:
    from hangar.domain.addressing import host_slice, machine_address, network_prefix
    from hangar.net.nftables import Firewall, FirewallSpec, MachineRule

    prefix = ipaddress.IPv6Network("fd97:9797::/32")
    work = Path(tempfile.mkdtemp(prefix="hangar-bench-nft-"))
    firewall = Firewall(work)

    def spec(n: int) -> FirewallSpec:
        rules = tuple(
            MachineRule(
                f"hvb{i:011x}",
                machine_address(host_slice(network_prefix(prefix, 1 + i % 50), 1), 2 + i),
                egress=i % 3 != 0,
            )
            for i in range(n)
        )
        return FirewallSpec(table="hangar_bench", installation=prefix, machines=rules)

    try:
        started = time.perf_counter()
        firewall.apply(spec(count))
        first = time.perf_counter() - started
        changes = []
        for extra in range(1, 6):
            started = time.perf_counter()
            firewall.apply(spec(count + extra))
            changes.append(time.perf_counter() - started)
        return first, statistics.median(changes)
    finally:
        firewall.remove("hangar_bench")
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved runs of each path")
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: does it run at all")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.machines = 1, 1, 20
    if os.geteuid() != 0:
        raise SystemExit("namespaces and machines need root: run this as root")
    for tool in ("iperf3", "nft", "runc", "wg", "wireguard-go"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: run `make deps`")
    hosts = host_paths(args.seconds, args.rounds)
    machines = machines_path(args.seconds, args.rounds)
    first, change = nft_apply(args.machines)
    print(f"TCP throughput, iperf3, {args.seconds}s x{args.rounds} each:")
    print(f"  {'path':48}{'Gbit/s':>8}{'ratio':>8}  against")
    rows = [
        ("plain veth pair, no filtering", hosts["plain"], hosts["plain"], "itself"),
        ("machine -> machine, one host (Hangar)", machines, hosts["plain"], "plain veth"),
        ("host -> host, WireGuard by hand (wireguard-go)", hosts["wireguard"], hosts["plain"],
         "plain veth"),
        ("host -> host, Hangar's mesh (wireguard-go)", hosts["mesh"], hosts["wireguard"],
         "WireGuard by hand"),
    ]  # fmt: skip
    for label, rate, base, against in rows:
        print(f"  {label:48}{rate:>8.2f}{rate / base:>8.2f}  {against}")
    print(
        f"nftables table for {args.machines} machines: first load {first * 1000:.0f} ms,"
        f" a change {change * 1000:.0f} ms (checked and loaded in one transaction)"
    )


if __name__ == "__main__":
    main()

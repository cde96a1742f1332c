"""Private networking: the cost of isolation, measured against plain veths in one run.

1. TCP throughput (iperf3, 5 s) between two machines of one network on this
   host: through their veths, the host's IPv6 forwarding and Hangar's
   nftables table (anti-spoofing, network isolation) — against the same
   two namespaces joined by one plain veth pair with no filtering.
2. The time to apply the nftables table for 1,000 machines (``nft -c`` then
   ``nft -f``, one transaction), and for the next change.

The machines are real runc machines of the example image; iperf3 runs from
the host's filesystem inside each machine's network namespace (the image
has no iperf3), which is the path the machines' own traffic takes.
3. TCP throughput between two "hosts" (network namespaces on a veth
   underlay) through the mesh's WireGuard interfaces, set up by the same
   code the agents run (wireguard-go here: no kernel module).

Run as root: `python benchmarks/network.py`.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
        ).stdout
    finally:
        server.wait(timeout=30)
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9


def plain_veth(seconds: int) -> float:
    a, b = "hbench-a", "hbench-b"
    for ns in (a, b):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(
            ["ip", "link", "add", "hbva", "netns", a, "type", "veth", "peer", "hbvb", "netns", b],
            check=True,
        )
        for ns, dev, addr in ((a, "hbva", "fd99::1"), (b, "hbvb", "fd99::2")):
            run = ["ip", "netns", "exec", ns]
            subprocess.run(
                [*run, "ip", "-6", "addr", "add", f"{addr}/64", "dev", dev, "nodad"], check=True
            )
            subprocess.run([*run, "ip", "link", "set", dev, "up"], check=True)
            subprocess.run([*run, "ip", "link", "set", "lo", "up"], check=True)
        return iperf(["ip", "netns", "exec", a], ["ip", "netns", "exec", b], "fd99::2", seconds)
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def mesh_path(seconds: int) -> float:
    """Two "hosts" (namespaces on a veth underlay) through WireGuard, as the mesh sets it up."""
    from hangar.net.wireguard import Peer

    a, b = "hbench-ma", "hbench-mb"
    work = Path(tempfile.mkdtemp(prefix="hangar-bench-mesh-"))
    for ns in (a, b):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(
            ["ip", "link", "add", "hbma", "netns", a, "type", "veth", "peer", "hbmb", "netns", b],
            check=True,
        )
        for ns, dev, addr in ((a, "hbma", "10.251.0.1"), (b, "hbmb", "10.251.0.2")):
            run = ["ip", "netns", "exec", ns]
            subprocess.run([*run, "ip", "addr", "add", f"{addr}/24", "dev", dev], check=True)
            subprocess.run([*run, "ip", "link", "set", dev, "up"], check=True)
            subprocess.run([*run, "ip", "link", "set", "lo", "up"], check=True)
        # Each side's Mesh runs in its namespace through a small helper process.
        keys = {}
        for ns, name in ((a, "bench-a"), (b, "bench-b")):
            keys[ns] = subprocess.run(
                [
                    "nsenter",
                    f"--net=/var/run/netns/{ns}",
                    sys.executable,
                    "-c",
                    "from pathlib import Path; from hangar.net.wireguard import Mesh; "
                    f"print(Mesh('{name}', Path('{work / ns}')).public_key())",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        sides = (
            (a, "bench-a", "10.251.0.2:51820", b, "fd96:1::1", "fd96:2::/64"),
            (b, "bench-b", "10.251.0.1:51820", a, "fd96:2::1", "fd96:1::/64"),
        )
        for ns, name, endpoint, other, own, theirs in sides:
            peer = Peer("other", keys[other], endpoint, (theirs,))
            fields = tuple(peer.__dict__.values())
            code = (
                "from pathlib import Path; from hangar.net.wireguard import Mesh, Peer; "
                f"Mesh('{name}', Path('{work / ns}')).apply([Peer(*{fields!r})])"
            )
            subprocess.run(
                ["nsenter", f"--net=/var/run/netns/{ns}", sys.executable, "-c", code], check=True
            )
            subprocess.run(
                ["ip", "netns", "exec", ns, "ip", "-6", "addr", "add", f"{own}/128", "dev", "lo"],
                check=True,
            )
        return iperf(["ip", "netns", "exec", a], ["ip", "netns", "exec", b], "fd96:2::1", seconds)
    finally:
        for ns in (a, b):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for name in ("bench-a", "bench-b"):
            from hangar.net.wireguard import interface_name

            Path(f"/var/run/wireguard/{interface_name(name)}.sock").unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


def machines_path(seconds: int) -> float:
    from hangar.agent.images import ImageStore
    from hangar.agent.reconciler import Assignment, Reconciler
    from hangar.agent.runtimes.runc import RuncRuntime
    from hangar.agent.service import Agent
    from hangar.domain.addressing import host_slice, machine_address, network_prefix
    from hangar.net.nftables import Firewall, table_name

    class NoLink:
        def assignments(self, wait: float) -> list[Assignment]:
            return []

        def report(self, *args: object) -> None:
            pass

    base = Path(tempfile.mkdtemp(prefix="hangar-bench-net-", dir="/var/tmp"))
    base.chmod(0o711)
    spec = importlib.util.spec_from_file_location("hello", ROOT / "examples/hello/build.py")
    assert spec is not None and spec.loader is not None
    hello = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hello)
    hello.build(base / "hello")
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
        return iperf(enter[0], enter[1], wanted[1].address, seconds)
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
    parser.add_argument("--machines", type=int, default=1000)
    args = parser.parse_args()
    for tool in ("iperf3", "nft", "runc"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: run `make deps`")
    plain = plain_veth(args.seconds)
    hangar = machines_path(args.seconds)
    mesh = mesh_path(args.seconds)
    first, change = nft_apply(args.machines)
    print("TCP throughput, iperf3:")
    rows = [
        ("plain veth pair, no filtering", plain),
        ("machine -> machine, one host (Hangar)", hangar),
        ("host -> host through the mesh (wg-go)", mesh),
    ]
    for label, rate in rows:
        print(f"  {label:40}{rate:7.2f} Gbit/s   ratio {rate / plain:.2f}")
    print(
        f"nftables table for {args.machines} machines: first load {first * 1000:.0f} ms,"
        f" a change {change * 1000:.0f} ms (checked and loaded in one transaction)"
    )


if __name__ == "__main__":
    main()

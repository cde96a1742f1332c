"""Machine isolation with nftables on one host, tried as an attacker would.

Real runc machines of two private networks, the agent's real nftables table,
probes from inside the machines: the full reachability matrix over TCP (a
machine's own wget) and UDP (sockets in the machine's network namespace),
forged source addresses, the host's own services, and egress to an
"outside" network namespace this test makes itself.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hangar.agent.appmetrics import AppMetrics
from hangar.agent.reconciler import Reconciler
from hangar.agent.runtimes.runc import RuncRuntime
from hangar.agent.service import Agent
from hangar.contract.assignments import Assignment, CheckSpec, MachineStatus
from hangar.contract.names import Record
from hangar.domain.addressing import host_slice, machine_address, network_prefix
from hangar.errors import CommandError
from hangar.images.store import Image, ImageStore
from hangar.net.netns import names
from hangar.net.nftables import Firewall, FirewallSpec, counters, render, table_name
from tests.integration.conftest import BASE_UID, needs_root, wait_for

pytestmark = [
    pytest.mark.slow,
    needs_root,
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs nftables (`make deps`)"),
]

PREFIX = ipaddress.IPv6Network("fd57:5757::/32")
NET_A = network_prefix(PREFIX, 1)  # one organization's network
NET_B = network_prefix(PREFIX, 2)  # another's
HOST = "iso-test-host"
OUTSIDE = ipaddress.IPv6Address("2001:db8:77::1")  # documentation range, on our own veth
# busybox's own -T crashes in a machine; its timeout applet bounds a blocked probe.
WGET = ["/bin/timeout", "3", "/bin/wget", "-q", "-O", "-"]
CHECK = CheckSpec("http", "http", 8080, interval=0.3, timeout=1, grace_period=0.1, path="/healthz")


class NoLink:
    """The agent's link is not under test here: only its firewall and resolver steps are."""

    def __init__(self, records: list[Record] | None = None) -> None:
        self.records = records or []

    def assignments(self, wait: float) -> list[Assignment]:
        return []

    def report(self, statuses: Mapping[str, MachineStatus], errors: Mapping[str, str]) -> None:
        pass

    def names(self) -> list[Record]:
        return self.records


def assignment(
    base_dir: Path, machine_id: str, net: ipaddress.IPv6Network, **kw: object
) -> Assignment:
    index = {"a1": 2, "a2": 3, "b1": 4}[machine_id.split("-")[-1]]
    values: dict[str, object] = {
        "machine_id": machine_id,
        "app": "hello",
        "version": 1,
        "state": "started",
        "image": f"oci:{base_dir / 'hello'}:latest",
        "memory_mb": 64,
        "address": str(machine_address(host_slice(net, 1), index)),
        "checks": [CHECK],
    }
    values.update(kw)
    return Assignment(**values)  # type: ignore[arg-type]


def in_netns(pid: int, code: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    """Python in a machine's network namespace: what that machine could send."""
    return subprocess.run(
        ["nsenter", "-t", str(pid), "-n", "--", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


UDP_LISTEN = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", 9999))
s.settimeout({timeout})
try:
    data, peer = s.recvfrom(100)
    print(peer[0], data.decode())
except TimeoutError:
    print("nothing")
"""

UDP_SEND = """
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
{bind}
for _ in range(3):
    s.sendto(b"probe", ("{dst}", 9999))
"""


@pytest.fixture
def cluster(
    runtime: RuncRuntime, base_dir: Path, hello: Image
) -> Iterator[tuple[Agent, Reconciler, dict[str, Assignment]]]:
    images = ImageStore(base_dir / "images", uid_base=BASE_UID)
    reconciler = Reconciler(runtime, images, base_dir / "iso-agent")
    firewall = Firewall(base_dir / "iso-agent" / "nftables")
    wanted = {
        "a1": assignment(base_dir, "iso-a1", NET_A, app="clinic-db"),
        "a2": assignment(base_dir, "iso-a2", NET_A, app="clinic-db"),
        "b1": assignment(base_dir, "iso-b1", NET_B, app="billing", egress=False),
    }
    records = [
        Record(a.app, "local", a.machine_id, ipaddress.IPv6Address(a.address))
        for a in wanted.values()
        if a.address
    ]
    agent = Agent(NoLink(records), reconciler, HOST, firewall=firewall, dns=True)  # type: ignore[arg-type]
    try:
        agent.apply_firewall(list(wanted.values()))
        agent.serve_dns()
        for _ in range(40):
            outcomes = reconciler.reconcile(list(wanted.values()), time.time())
            assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
            if not outcomes:
                break
            time.sleep(0.1)
        for a in wanted.values():
            wait_for(lambda a=a: runtime.state(a.machine_id).status == "running")
        yield agent, reconciler, wanted
    finally:
        for a in wanted.values():
            runtime.remove(a.machine_id)
        firewall.remove(table_name(HOST))
        if agent.dns is not None:
            agent.dns.stop()


def tcp(runtime: RuncRuntime, src: str, dst: Assignment) -> bool:
    result = runtime.exec(src, [*WGET, f"http://[{dst.address}]:8080/healthz"])
    return result.exit_code == 0


def tcp_from_host(dst: Assignment) -> bool:
    try:
        with socket.create_connection((str(dst.address), 8080), timeout=3) as conn:
            conn.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            return conn.recv(100).split(b"\r\n")[0].endswith(b" 200 OK")
    except OSError:
        return False


def forge(pid: int, verb: str, address: str) -> None:
    """Give (or take back) a machine's interface another address, as an attacker would."""
    argv = ["nsenter", "-t", str(pid), "-n", "ip", "-6", "addr", verb, f"{address}/128"]
    subprocess.run(
        [*argv, "dev", "eth0", *(["nodad"] if verb == "add" else [])], check=verb == "add"
    )


def udp_probe(runtime: RuncRuntime, src: Assignment, dst: Assignment, bind: str = "") -> str:
    """Send from ``src``'s namespace (from ``bind`` if given); what ``dst`` received."""
    src_pid, dst_pid = runtime.state(src.machine_id).pid, runtime.state(dst.machine_id).pid
    assert src_pid and dst_pid
    got: list[str] = []

    def listen() -> None:
        got.append(in_netns(dst_pid, UDP_LISTEN.format(timeout=2)).stdout)

    listener = threading.Thread(target=listen)
    listener.start()
    time.sleep(0.3)
    line = f's.bind(("{bind}", 0))' if bind else ""
    in_netns(src_pid, UDP_SEND.format(bind=line, dst=dst.address))
    listener.join()
    return got[0] if got else ""


def udp(runtime: RuncRuntime, src: Assignment, dst: Assignment) -> bool:
    return udp_probe(runtime, src, dst).startswith(str(src.address))


def test_reachability_matrix_spoofing_and_the_host(
    cluster: tuple[Agent, Reconciler, dict[str, Assignment]], runtime: RuncRuntime
) -> None:
    _, _, m = cluster
    a1, a2, b1 = m["a1"], m["a2"], m["b1"]
    # Positive control first: same network, reachable both ways.
    assert tcp(runtime, a1.machine_id, a2), "a1 -> a2 must work before anything is judged"
    assert udp(runtime, a2, a1)
    expected = {
        (s, d): m[s].address.split(":")[2] == m[d].address.split(":")[2]
        for s in m
        for d in m
        if s != d
    }
    observed = {}
    for s, d in expected:
        observed[(s, d)] = (tcp(runtime, m[s].machine_id, m[d]), udp(runtime, m[s], m[d]))
    rows = [f"{'from':6}{'to':6}{'expected':10}{'tcp':6}{'udp':6}"]
    for (s, d), want in sorted(expected.items()):
        got = observed[(s, d)]
        rows.append(f"{s:6}{d:6}{want!s:10}{got[0]!s:6}{got[1]!s:6}")
    print("\n" + "\n".join(rows))
    assert all(observed[k] == (v, v) for k, v in expected.items()), "\n".join(rows)
    table = table_name(HOST)
    assert counters(table)["cross_network"] > 0

    # A forged source, another org's address or a neighbour's: dropped, and counted.
    pid = runtime.state(a1.machine_id).pid
    assert pid
    for forged in (b1.address, a2.address):
        before = counters(table)["spoofed"]
        forge(pid, "add", forged)
        try:
            target = a2 if forged == b1.address else b1
            assert udp_probe(runtime, a1, target, bind=forged) == "nothing\n"
            assert counters(table)["spoofed"] >= before + 3
        finally:
            forge(pid, "del", forged)

    # The host's own services are out of reach (but not its health checks of them).
    service = "2001:db8:99::1"  # an address of the host's, as its API or SSH would have
    subprocess.run(["ip", "-6", "addr", "replace", f"{service}/128", "dev", "lo"], check=True)
    server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    server.bind(("::", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        for target in (service, "fe80::1%eth0"):
            before = counters(table)
            probe = in_netns(
                pid,
                "import socket\n"
                f"try: socket.create_connection(('{target}', {port}), timeout=2); print('open')\n"
                "except OSError as e: print('refused', e)\n",
            )
            assert probe.stdout.startswith("refused"), probe.stdout + probe.stderr
            after = counters(table)
            assert after["to_host"] > before["to_host"], (target, before, after)
        # The host still reaches the machine (health checks, the edge).
        assert tcp_from_host(a1)
    finally:
        server.close()
        subprocess.run(["ip", "-6", "addr", "del", f"{service}/128", "dev", "lo"], check=False)


@pytest.fixture
def outside() -> Iterator[str]:
    """A network namespace on a veth, with a 'public' address: the internet, locally."""
    name = f"hangar-out-{int(time.time() * 1000) % 100000}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(
            ["ip", "link", "add", "hout0", "type", "veth", "peer", "name", "hout1"], check=True
        )
        subprocess.run(["ip", "link", "set", "hout1", "netns", name], check=True)
        subprocess.run(
            ["ip", "-6", "addr", "add", "2001:db8:77::2/64", "dev", "hout0", "nodad"], check=True
        )
        subprocess.run(["ip", "link", "set", "hout0", "up"], check=True)
        inside = ["ip", "netns", "exec", name]
        subprocess.run(
            [*inside, "ip", "-6", "addr", "add", f"{OUTSIDE}/64", "dev", "hout1", "nodad"],
            check=True,
        )
        subprocess.run([*inside, "ip", "link", "set", "hout1", "up"], check=True)
        subprocess.run([*inside, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "link", "del", "hout0"], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_egress_is_per_app_and_through_nat(
    cluster: tuple[Agent, Reconciler, dict[str, Assignment]],
    runtime: RuncRuntime,
    outside: str,
) -> None:
    _, _, m = cluster
    seen = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            outside,
            sys.executable,
            "-c",
            "import socket\n"
            "s = socket.socket(socket.AF_INET6)\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('{OUTSIDE}', 8088)); s.listen(); s.settimeout(8)\n"
            "c, peer = s.accept(); print(peer[0]); c.recv(1000)\n"
            "c.sendall(b'HTTP/1.0 200 OK\\r\\n\\r\\nout\\n'); c.shutdown(socket.SHUT_WR)\n"
            "c.recv(1000); c.close()\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        peer = _egress(runtime, m, seen)
    finally:
        seen.kill()
        seen.wait()
    # The outside saw the host's address, never the machine's private one.
    assert peer == "2001:db8:77::2", peer


def _egress(runtime: RuncRuntime, m: dict[str, Assignment], seen: subprocess.Popen[str]) -> str:
    time.sleep(0.5)
    table = table_name(HOST)
    before = counters(table)["no_egress"]
    denied = runtime.exec(m["b1"].machine_id, [*WGET, f"http://[{OUTSIDE}]:8088/"])
    assert denied.exit_code != 0
    assert counters(table)["no_egress"] > before
    allowed = runtime.exec(m["a1"].machine_id, [*WGET, f"http://[{OUTSIDE}]:8088/"])
    assert allowed.exit_code == 0 and b"out" in allowed.stdout
    return seen.communicate(timeout=10)[0].strip()


def test_a_refused_ruleset_changes_nothing(
    cluster: tuple[Agent, Reconciler, dict[str, Assignment]], runtime: RuncRuntime, base_dir: Path
) -> None:
    agent, _, m = cluster
    table = table_name(HOST)
    before = subprocess.run(
        ["nft", "-s", "list", "table", "inet", table], capture_output=True, text=True
    ).stdout
    bad = render(FirewallSpec(table=table, installation=PREFIX)).replace(
        "policy accept;", "policy maybe;", 1
    )
    firewall = Firewall(base_dir / "iso-agent" / "nftables")
    with pytest.raises(CommandError) as caught:
        firewall.check(bad)
    assert "nft" in caught.value.message
    after = subprocess.run(
        ["nft", "-s", "list", "table", "inet", table], capture_output=True, text=True
    ).stdout
    assert after == before
    # Re-applying the same table (a restarted agent) keeps established flows.
    fresh = Agent(
        NoLink(),  # type: ignore[arg-type]
        agent.reconciler,
        HOST,
        firewall=Firewall(base_dir / "iso-agent" / "nftables"),
    )
    a1_pid = runtime.state(m["a1"].machine_id).pid
    assert a1_pid
    flow = subprocess.Popen(
        [
            "nsenter",
            "-t",
            str(a1_pid),
            "-n",
            "--",
            sys.executable,
            "-c",
            "import socket, time\n"
            f"s = socket.create_connection(('{m['a2'].address}', 8080), timeout=5)\n"
            "time.sleep(1.5)\n"
            "s.sendall(b'GET /healthz HTTP/1.0\\r\\n\\r\\n')\n"
            "print(s.recv(100).split(b'\\r\\n')[0].decode())\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    fresh._installation = None
    fresh.apply_firewall(list(m.values()))  # the same rules, loaded again while the flow is open
    assert flow.communicate(timeout=10)[0].strip() == "HTTP/1.1 200 OK"


def test_internal_dns_names_only_the_askers_network(
    cluster: tuple[Agent, Reconciler, dict[str, Assignment]], runtime: RuncRuntime
) -> None:
    """Asked from inside the machines, with their own resolv.conf and busybox's nslookup."""
    agent, _, m = cluster
    assert agent.dns is not None and agent.dns.running
    resolv = runtime.exec(m["a1"].machine_id, ["/bin/cat", "/etc/resolv.conf"]).stdout.decode()
    assert resolv == f"nameserver {agent.dns.address}\n"

    def lookup(machine: str, name: str) -> tuple[int, str]:
        got = runtime.exec(m[machine].machine_id, ["/bin/timeout", "5", "/bin/nslookup", name])
        return got.exit_code, (got.stdout + got.stderr).decode()

    code, text = lookup("a1", "clinic-db.internal")
    assert code == 0 and m["a1"].address in text and m["a2"].address in text, text
    code, text = lookup("a1", "billing.internal")  # another organization's
    assert code != 0 and m["b1"].address not in text, text
    code, text = lookup("b1", "billing.internal")
    assert code == 0 and m["b1"].address in text, text
    code, text = lookup("b1", "clinic-db.internal")
    assert code != 0 and m["a1"].address not in text, text
    code, text = lookup("a1", "iso-a2.vm.clinic-db.internal")
    assert code == 0 and m["a2"].address in text and m["a1"].address not in text, text
    code, text = lookup("a1", "example.com")  # not forwarded: refused
    assert code != 0, text


def test_each_machines_traffic_is_counted_and_survives_a_new_table(
    runtime: RuncRuntime, cluster: tuple[Agent, Reconciler, dict[str, Assignment]]
) -> None:
    agent, _, m = cluster
    a1, a2, b1 = m["a1"], m["a2"], m["b1"]
    iface = {k: names(v.machine_id)[0] for k, v in m.items()}
    before = agent._traffic()
    assert set(iface.values()) <= set(before)
    assert udp(runtime, a1, a2)
    assert tcp(runtime, a1.machine_id, a2)
    after = agent._traffic()
    # a1 sent at least the 3 datagrams and a TCP exchange; a2 received them.
    assert after[iface["a1"]].tx_packets >= before[iface["a1"]].tx_packets + 3
    assert after[iface["a1"]].tx_bytes > before[iface["a1"]].tx_bytes + 3 * len(b"probe")
    assert after[iface["a2"]].rx_packets >= before[iface["a2"]].rx_packets + 3
    assert after[iface["a1"]].rx_bytes > before[iface["a1"]].rx_bytes  # the HTTP answer

    # A new table (a machine's egress changed) carries the counters on.
    agent.apply_firewall([a1, a2, dataclasses.replace(b1, egress=True)])
    carried = agent._traffic()
    for k in ("a1", "a2"):
        assert carried[iface[k]].tx_bytes >= after[iface[k]].tx_bytes
        assert carried[iface[k]].rx_packets >= after[iface[k]].rx_packets

    # What the agent ships for each machine: its own interface's figures, labelled.
    metrics = AppMetrics(network=agent._traffic)
    metrics.tick([a1, a2, b1])
    shipped = metrics.take()
    for k, want in m.items():
        figures = {
            s.name: s.value
            for f in text_string_to_metric_families(shipped[want.machine_id][1])
            for s in f.samples
            if s.labels["machine"] == want.machine_id
        }
        now = agent._traffic()[iface[k]]
        assert figures["hangar_machine_network_transmit_packets_total"] <= now.tx_packets
        if k in ("a1", "a2"):  # they talked above; b1 may not have sent anything
            assert figures["hangar_machine_network_transmit_packets_total"] >= (
                after[iface[k]].tx_packets
            )
        assert figures["hangar_machine_network_transmit_bytes_total"] <= now.tx_bytes
        assert figures["hangar_machine_network_receive_bytes_total"] <= now.rx_bytes
        assert figures["hangar_machine_network_receive_packets_total"] <= now.rx_packets
    a1_sent = text_string_to_metric_families(shipped[a1.machine_id][1])
    assert {s.labels["machine"] for f in a1_sent for s in f.samples} == {a1.machine_id}

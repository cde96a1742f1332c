"""Three hosts on one machine: network namespaces on an underlay bridge, a mesh between them.

The control plane runs in the root namespace on the bridge's address; each
"host" is a network namespace with its own agent (joined with a token), its
own nftables, its own WireGuard interface (wireguard-go) and runc machines.
Machines of two organizations are spread over the hosts; the test checks
the reachability matrix across hosts, that the underlay carries only
WireGuard, and that removing a host removes its peer everywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from hangar.net.wireguard import interface_name
from tests.e2e.test_cli_flow import HANGAR, Server, free_port, init, login, stop
from tests.e2e.test_deploy_flow import CONFIG, build_example_image

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in ("wg", "wireguard-go", "tcpdump", "nft", "runc")),
        reason="needs wireguard-tools, wireguard-go, tcpdump, nftables, runc (`make deps`)",
    ),
]

HOSTS = ("h1", "h2", "h3")


@dataclass
class Cluster:
    srv: Server
    tmp: Path
    root: Path
    bridge: str
    underlay: dict[str, str]  # host -> its underlay address
    namespaces: dict[str, str]
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_agent(self, host: str, *first_time: str) -> None:
        """The host's agent in its namespace (``first_time``: --api and --join, to join)."""
        with open(self.tmp / f"{host}.log", "ab") as log:
            self.agents[host] = subprocess.Popen(
                [
                    # Only the network namespace: `ip netns exec` would also hide
                    # the host's cgroup mounts, which runc needs.
                    "nsenter",
                    f"--net=/var/run/netns/{self.namespaces[host]}",
                    *HANGAR,
                    "agent",
                    "run",
                    *first_time,
                    "--agent-dir",
                    str(self.root / host),
                    "--poll",
                    "1",
                    "--mesh-endpoint",
                    f"{self.underlay[host]}:51820",
                ],
                env=self.srv.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def host_ids(self) -> dict[str, str]:
        return {h["name"]: h["id"] for h in self.srv.json("hosts", "list")}  # type: ignore[union-attr]

    def wg_peers(self, host: str) -> set[str]:
        iface = interface_name(self.host_ids()[host])
        out = subprocess.run(
            ["ip", "netns", "exec", self.namespaces[host], "wg", "show", iface, "peers"],
            capture_output=True,
            text=True,
        ).stdout
        return set(out.split())


def sh(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True)


def wait_for(what: str, predicate: Callable[[], object], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    tag = secrets.token_hex(2)
    bridge = f"hmbr{tag}"
    net = f"10.{77 + int(tag[:2], 16) % 100}.{int(tag[2:], 16)}"
    gateway = f"{net}.1"
    namespaces = {h: f"hm{tag}{h}" for h in HOSTS}
    underlay = {h: f"{net}.{11 + i}" for i, h in enumerate(HOSTS)}
    root = Path(tempfile.mkdtemp(prefix="hangar-mesh-", dir="/var/tmp"))
    root.chmod(0o711)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANGAR_")}
    env["HANGAR_CONFIG_DIR"] = str(tmp_path / "cli")
    sh("ip", "link", "add", bridge, "type", "bridge")
    sh("ip", "addr", "add", f"{gateway}/24", "dev", bridge)
    sh("ip", "link", "set", bridge, "up")
    for i, host in enumerate(HOSTS):
        ns, veth = namespaces[host], f"hmv{tag}{i}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "under0", "netns", ns)
        sh("ip", "link", "set", veth, "master", bridge, "up")
        sh("ip", "-n", ns, "addr", "add", f"{underlay[host]}/24", "dev", "under0")
        sh("ip", "-n", ns, "link", "set", "under0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    data_dir, token_file = tmp_path / "data", tmp_path / "admin.token"
    init_env = {**env, "HANGAR_TLS_HOSTNAMES": json.dumps(["localhost", gateway])}
    init(data_dir, token_file, init_env)
    port, agent_port = free_port(), free_port()
    with open(tmp_path / "server.log", "ab") as log:
        proc = subprocess.Popen(
            [
                *HANGAR,
                "server",
                "run",
                "--data-dir",
                str(data_dir),
                "--listen-host",
                gateway,
                "--listen-port",
                str(port),
                "--agent-listen-port",
                str(agent_port),
                "--metrics-port",
                "0",
                "--no-agent",
                "--no-edge",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    api = f"https://{gateway}:{port}"
    trust = ssl.create_default_context(cafile=str(data_dir / "ca.crt"))

    def up() -> bool:
        try:
            return httpx.get(f"{api}/v1/healthz", verify=trust, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    srv = Server(data_dir, api, token_file.read_text().strip(), env, proc)
    cl = Cluster(srv, tmp_path, root, bridge, underlay, namespaces)
    try:
        wait_for("the control plane", up, timeout=30)
        login(srv)
        build_example_image(tmp_path / "image")
        for host in HOSTS:
            made = srv.json("hosts", "join-token", "--name", host, "--expires", "5m")
            cl.start_agent(host, "--api", api, "--join", str(made["token"]))  # type: ignore[index]
        wait_for(
            "three hosts in the mesh",
            lambda: (
                all(
                    h.get("mesh_public_key")
                    for h in srv.json("hosts", "list")  # type: ignore[union-attr]
                )
                and len(srv.json("hosts", "list")) == 3
            ),
        )  # type: ignore[arg-type]
        yield cl
    finally:
        for app in ("alpha", "beta"):
            srv.cli("apps", "destroy", app, "--yes", check=False)
        for host in HOSTS:
            machines = root / host / "state/machines"
            deadline = time.monotonic() + 30
            while machines.exists() and any(machines.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.3)
        for agent in cl.agents.values():
            agent.send_signal(signal.SIGTERM)
        for agent in cl.agents.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(timeout=30)
        stop(proc)
        for host in HOSTS:
            state = root / host / "state"
            for left in (state / "machines").glob("*") if (state / "machines").exists() else []:
                subprocess.run(
                    ["runc", "--root", str(state / "runc"), "delete", "--force", left.name],
                    capture_output=True,
                )
            subprocess.run(["umount", str(root / host / "bundles")], capture_output=True)
        for ns in namespaces.values():
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
            for pid in out.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for sock in Path("/var/run/wireguard").glob("hwg*.sock"):
            if not any(p.name == sock.stem for p in Path("/sys/class/net").iterdir()):
                sock.unlink(missing_ok=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def deploy_on(cl: Cluster, app: str, host: str, org: str | None = None) -> str:
    """Deploy (or add) one machine of ``app`` on ``host`` only; its machine id."""
    srv = cl.srv
    for other in HOSTS:
        srv.cli("hosts", "cordon" if other != host else "uncordon", other)
    known = {m["id"] for m in srv.json("machines", "list", "--app", app)}  # type: ignore[union-attr]
    if not known:
        config = cl.tmp / f"{app}.toml"
        config.write_text(
            CONFIG.format(image=cl.tmp / "image", path="/healthz", wait="90s").replace(
                'app = "hello"', f'app = "{app}"'
            )
        )
        out = srv.cli("deploy", "--config", str(config))
        assert "is live" in out.stdout, out.stdout + out.stderr
    else:
        srv.cli("machines", "create", "--app", app)

    def started() -> str | None:
        for m in srv.json("machines", "list", "--app", app):  # type: ignore[union-attr]
            if m["id"] not in known and m["state"] == "started" and m["healthy"]:
                assert m["host"] == host
                return str(m["id"])
        return None

    wait_for(f"{app} on {host}", started)
    found = started()
    assert found is not None
    return found


def reach(cl: Cluster, app: str, machine: str, address: str, query: str = "") -> bool:
    got = cl.srv.cli(
        "machines",
        "exec",
        machine,
        "--app",
        app,
        "--",
        "/bin/timeout",
        "4",
        "/bin/wget",
        "-q",
        "-O",
        "-",
        f"http://[{address}]:8080/healthz{query}",
        check=False,
    )
    return got.returncode == 0


def test_three_hosts_mesh_isolation_and_removal(cluster: Cluster) -> None:
    cl, srv = cluster, cluster.srv
    srv.cli("apps", "create", "alpha")
    srv.cli("orgs", "create", "globex")
    srv.cli("apps", "create", "beta", "--org", "globex")
    a1 = deploy_on(cl, "alpha", "h1")
    a2 = deploy_on(cl, "alpha", "h2")
    b3 = deploy_on(cl, "beta", "h3")
    where = {a1: ("alpha", "h1"), a2: ("alpha", "h2"), b3: ("beta", "h3")}
    addresses = {
        m["id"]: m["address"]
        for app in ("alpha", "beta")
        for m in srv.json("machines", "list", "--app", app)  # type: ignore[union-attr]
    }
    # Every host has the other two as peers.
    keys = {h["name"]: h["mesh_public_key"] for h in srv.json("hosts", "list")}  # type: ignore[union-attr]
    for host in HOSTS:
        wait_for(
            f"{host}'s peers",
            lambda host=host: cl.wg_peers(host) == {keys[o] for o in HOSTS if o != host},
        )

    # Positive control first: the same network across hosts.
    assert reach(cl, "alpha", a1, addresses[a2]), "alpha h1 -> alpha h2 must work first"
    rows = [f"{'from':22}{'to':22}{'expected':10}observed"]
    ok = True
    for src, (src_app, src_host) in where.items():
        for dst, (dst_app, dst_host) in where.items():
            if src == dst:
                continue
            expected = src_app == dst_app
            observed = reach(cl, src_app, src, addresses[dst])
            ok &= observed == expected
            rows.append(f"{src_app}@{src_host:18}{dst_app}@{dst_host:18}{expected!s:10}{observed}")
    print("\n" + "\n".join(rows))
    assert ok, "\n".join(rows)

    # On the underlay, hosts speak only WireGuard to each other: no plaintext.
    canary = "canary-" + secrets.token_hex(12)
    pcap = cl.tmp / "underlay.pcap"
    dump = subprocess.Popen(
        ["tcpdump", "-i", cl.bridge, "-U", "-w", str(pcap), "-s", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)
    assert reach(cl, "alpha", a1, addresses[a2], f"?{canary}")
    time.sleep(1)
    dump.send_signal(signal.SIGINT)
    dump.wait(timeout=10)
    assert canary.encode() not in pcap.read_bytes()
    hosts_only = " or ".join(f"host {a}" for a in cl.underlay.values())
    between = subprocess.run(
        [
            "tcpdump",
            "-n",
            "-r",
            str(pcap),
            # IP only: ARP between the hosts carries no payload.
            f"ip and src host {cl.underlay['h1']} and dst host {cl.underlay['h2']}"
            " and not udp port 51820",
        ],
        capture_output=True,
        text=True,
    ).stdout
    assert between.strip() == "", between
    wireguard = subprocess.run(
        ["tcpdump", "-n", "-r", str(pcap), f"udp port 51820 and ({hosts_only})"],
        capture_output=True,
        text=True,
    ).stdout
    assert wireguard.strip(), "the probe must have crossed the mesh"

    # Hosts report their handshakes; `hosts list` shows how long ago.
    wait_for(
        "handshakes reported",
        lambda: all(
            h["mesh_handshake_at"]
            for h in srv.json("hosts", "list")  # type: ignore[union-attr]
        ),
    )
    assert "s ago" in srv.cli("hosts", "list").stdout

    # A restarted agent keeps its machines, rules and peers, and traffic flows on.
    cl.agents["h1"].send_signal(signal.SIGTERM)
    cl.agents["h1"].wait(timeout=30)
    # With h1's agent away, its machine, rules and WireGuard keep carrying traffic.
    assert reach(cl, "alpha", a2, addresses[a1])
    cl.start_agent("h1")
    wait_for("h1's agent back", lambda: reach(cl, "alpha", a1, addresses[a2]))
    assert cl.wg_peers("h1") == {keys["h2"], keys["h3"]}

    # A person's laptop joins the organization's network through the mesh.
    made = srv.cli("wireguard", "create", "--name", "laptop", "--org", "acme").stdout
    laptop = join_laptop(cl, made)
    listed = srv.json("wireguard", "list", "--org", "acme")
    assert isinstance(listed, list) and [p["name"] for p in listed] == ["laptop"]
    assert "PrivateKey" not in json.dumps(listed)
    assert laptop.lookup("alpha.internal") == sorted([addresses[a1], addresses[a2]])
    assert laptop.lookup("beta.internal") == "NXDOMAIN"  # another organization's
    assert laptop.reach(addresses[a1]) and laptop.reach(addresses[a2])
    assert not laptop.reach(addresses[b3])
    srv.cli("wireguard", "remove", "laptop", "--org", "acme", "--yes")
    wait_for("the laptop to lose its access", lambda: not laptop.reach(addresses[a1]))

    # Removing a host takes its peer out of every other host's interface.
    srv.cli("apps", "destroy", "beta", "--yes")
    wait_for(
        "h3 to have no machines",
        lambda: (
            not any((cl.root / "h3/state/machines").iterdir())
            if (cl.root / "h3/state/machines").exists()
            else True
        ),
    )
    srv.cli("hosts", "remove", "h3", "--yes")
    for host in ("h1", "h2"):
        wait_for(f"{host} to drop h3", lambda host=host: keys["h3"] not in cl.wg_peers(host))
    assert reach(cl, "alpha", a1, addresses[a2])


@dataclass
class Laptop:
    namespace: str
    resolver: str

    def run(self, code: str) -> str:
        return subprocess.run(
            ["nsenter", f"--net=/var/run/netns/{self.namespace}", sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()

    def lookup(self, name: str) -> list[str] | str:
        out = self.run(
            "from dnslib import DNSRecord, QTYPE, RCODE\n"
            f"q = DNSRecord.question('{name}', 'AAAA')\n"
            f"r = DNSRecord.parse(q.send('{self.resolver}', 53, ipv6=True, timeout=5))\n"
            "print(RCODE[r.header.rcode], *sorted(str(a.rdata) for a in r.rr))\n"
        ).split()
        return out[0] if out[0] != "NOERROR" else sorted(out[1:])

    def reach(self, address: str) -> bool:
        return self.run(
            "import socket\n"
            "try:\n"
            f"    s = socket.create_connection(('{address}', 8080), timeout=3)\n"
            "    s.sendall(b'GET /healthz HTTP/1.0\\r\\n\\r\\n')\n"
            "    print(s.recv(100).split(b'\\r\\n')[0].decode())\n"
            "except OSError:\n"
            "    print('unreachable')\n"
        ).endswith("200 OK")


def join_laptop(cl: Cluster, config: str) -> Laptop:
    """A namespace on the underlay, its WireGuard set up from `hangar wireguard create`."""
    fields: dict[str, str] = {}
    for line in config.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            fields[key.strip()] = value.strip()
    ns = cl.bridge + "lap"
    cl.namespaces["laptop"] = ns
    veth = cl.bridge.replace("hmbr", "hml")
    address = cl.underlay["h1"].rsplit(".", 1)[0] + ".50"
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "under0", "netns", ns)
    sh("ip", "link", "set", veth, "master", cl.bridge, "up")
    sh("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "under0")
    sh("ip", "-n", ns, "link", "set", "under0", "up")
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    iface = "hwgl" + cl.bridge[-4:]
    enter = ["nsenter", f"--net=/var/run/netns/{ns}"]
    subprocess.run([*enter, "wireguard-go", iface], check=True, capture_output=True)
    wg_conf = cl.tmp / "laptop-wg.conf"
    wg_conf.write_text(
        f"[Interface]\nPrivateKey = {fields['PrivateKey']}\n\n[Peer]\n"
        f"PublicKey = {fields['PublicKey']}\nEndpoint = {fields['Endpoint']}\n"
        f"AllowedIPs = {fields['AllowedIPs']}\nPersistentKeepalive = 25\n"
    )
    sh(*enter, "wg", "setconf", iface, str(wg_conf))
    sh(*enter, "ip", "-6", "addr", "add", fields["Address"], "dev", iface)
    sh(*enter, "ip", "link", "set", iface, "up")
    for route in fields["AllowedIPs"].split(","):
        sh(*enter, "ip", "-6", "route", "replace", route.strip(), "dev", iface)
    resolver = fields["DNS"].split(",")[0].strip()
    return Laptop(ns, resolver)

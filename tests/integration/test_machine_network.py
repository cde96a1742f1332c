"""The example app in its own network namespace, reached from its host over IPv6."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from hangar import hostcmd
from hangar.agent.runtimes.base import MachineSpec
from hangar.agent.runtimes.runc import RuncRuntime
from hangar.domain.addressing import host_slice, machine_address, network_prefix
from hangar.errors import CommandError
from hangar.images.store import Image
from hangar.net import netns
from tests.integration.conftest import leftovers, needs_root, wait_for

pytestmark = [pytest.mark.slow, needs_root]
SLICE = host_slice(network_prefix(ipaddress.IPv6Network("fd42:4242::/32"), 1), 1)


def http_get(address: ipaddress.IPv6Address, port: int, path: str) -> bytes:
    with socket.create_connection((str(address), port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: hello\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


ADDRESS = machine_address(SLICE, 2)


def test_example_app_answers_on_its_private_address(runtime: RuncRuntime, hello: Image) -> None:
    cfg = hello.config
    uid, gid = (int(x) for x in cfg.user.split(":"))
    runtime.start(
        MachineSpec(
            id="m-net",
            rootfs=hello.rootfs,
            args=cfg.entrypoint + cfg.cmd,
            cwd=cfg.working_dir,
            uid=uid,
            gid=gid,
            address=ADDRESS,
            env={"HANGAR_PRIVATE_IP": str(ADDRESS)},
            hosts={"m-net.vm.hello.internal": str(ADDRESS)},
        )
    )
    try:
        wait_for(lambda: _answers(ADDRESS))
        page = http_get(ADDRESS, 8080, "/")
        assert page.split(b"\r\n")[0].endswith(b" 200 OK") and b"Hello from Hangar" in page
        assert http_get(ADDRESS, 8080, "/healthz").endswith(b"ok\n")
        inside = runtime.exec("m-net", ["/bin/sh", "-c", "id -u; env; cat /etc/hosts"])
        assert inside.exit_code == 0, inside.stderr
        text = inside.stdout.decode()
        assert text.splitlines()[0] == "1000"  # the image's unprivileged user
        assert f"HANGAR_PRIVATE_IP={ADDRESS}" in text
        assert f"{ADDRESS}\tm-net.vm.hello.internal" in text
    finally:
        runtime.remove("m-net")
    assert not netns.link_exists(netns.host_interface("m-net"))  # removal takes the veth too


def _answers(address: ipaddress.IPv6Address) -> bool:
    try:
        return http_get(address, 8080, "/healthz").endswith(b"ok\n")
    except OSError:
        return False


def test_a_failed_network_stops_the_machine_and_leaves_nothing(
    runtime: RuncRuntime, hello: Image
) -> None:
    # The host end of this machine's veth already exists: the hook must fail.
    host_if, _ = netns.names("m-clash")
    hostcmd.run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", "hclash"])
    try:
        with pytest.raises(CommandError) as info:
            runtime.start(
                MachineSpec(
                    id="m-clash",
                    rootfs=hello.rootfs,
                    args=["/bin/httpd", "-f"],
                    address=machine_address(SLICE, 3),
                )
            )
        assert "already has a network" in str(info.value)
        assert leftovers(runtime, "m-clash") == []
    finally:
        hostcmd.run(["ip", "link", "del", host_if], check=False)

"""What an image may make the agent read, and which registries the server will reach."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from hangar.agent.reconciler import _parse_user
from hangar.errors import ValidationError
from hangar.images import registry
from hangar.images.registry import check_registry, registry_name

PASSWD = "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    return root


def test_a_plain_passwd_names_the_user(rootfs: Path) -> None:
    (rootfs / "etc/passwd").write_text(PASSWD)
    assert _parse_user("app", rootfs) == (1000, 1001)
    assert _parse_user("app:7", rootfs) == (1000, 7)
    assert _parse_user("42", rootfs) == (42, 42)


def test_links_inside_the_image_resolve_inside_it(rootfs: Path) -> None:
    (rootfs / "usr/share").mkdir(parents=True)
    (rootfs / "usr/share/passwd").write_text(PASSWD)
    (rootfs / "etc/passwd").symlink_to("/usr/share/passwd")
    assert _parse_user("app", rootfs) == (1000, 1001)


@pytest.mark.parametrize("target", ["/etc/shadow", "../../../../../../etc/shadow", "/etc/passwd"])
def test_a_passwd_linking_out_never_reads_the_hosts(rootfs: Path, target: str) -> None:
    # As the image sees it, the link points at its own /etc/shadow or /etc/passwd
    # (absent, or itself): the host's files are never read.
    (rootfs / "etc/passwd").symlink_to(target)
    with pytest.raises(ValidationError):
        _parse_user("root", rootfs)


def test_etc_a_link_out_of_the_image(rootfs: Path) -> None:
    (rootfs / "etc").rmdir()
    (rootfs / "etc").symlink_to("/etc")  # taken as the image's own /etc: itself
    with pytest.raises(ValidationError):
        _parse_user("root", rootfs)


def _bounded(call: Any) -> BaseException | None:
    caught: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            caught.append(None)
        except BaseException as exc:
            caught.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    assert caught, "reading the image's /etc/passwd blocked"
    return caught[0]


def test_a_fifo_passwd_is_refused_without_blocking(rootfs: Path) -> None:
    os.mkfifo(rootfs / "etc/passwd")
    assert isinstance(_bounded(lambda: _parse_user("app", rootfs)), ValidationError)


def test_an_oversize_or_odd_passwd_is_refused(rootfs: Path) -> None:
    (rootfs / "etc/passwd").write_bytes(b"x" * (2 << 20))
    with pytest.raises(ValidationError):
        _parse_user("app", rootfs)
    (rootfs / "etc/passwd").unlink()
    (rootfs / "etc/passwd").mkdir()
    with pytest.raises(ValidationError):
        _parse_user("app", rootfs)
    (rootfs / "etc/passwd").rmdir()
    (rootfs / "etc/passwd").write_text("app:x:notanumber:1::/:/bin/sh\n")
    with pytest.raises(ValidationError):
        _parse_user("app", rootfs)


def test_registry_names_are_read_as_docker_reads_them() -> None:
    assert registry_name("library/alpine:3") == ("docker.io", "registry-1.docker.io", 443)
    assert registry_name("alpine") == ("docker.io", "registry-1.docker.io", 443)
    assert registry_name("localhost/x") == ("localhost", "localhost", 443)
    assert registry_name("127.0.0.1:18443/x") == ("127.0.0.1:18443", "127.0.0.1", 18443)
    assert registry_name("[::1]:5000/x") == ("[::1]:5000", "::1", 5000)
    with pytest.raises(ValidationError):
        registry_name("host:99999/x")


def _own_address() -> str | None:
    """A non-loopback address of this host, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent for UDP connect
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") else address


INTERNAL = [
    "127.0.0.1:18443/clinic/web:v1",
    "127.1.2.3/x",
    "localhost:5000/x",
    "localhost/x",
    "[::1]:5000/x",
    "[::ffff:127.0.0.1]/x",
    "[64:ff9b::7f00:1]/x",
    "[2002:7f00:1::1]/x",
    "0.0.0.0:5000/x",
    "[::]/x",
    "10.1.2.3/x",
    "172.16.0.1/x",
    "192.168.1.1/x",
    "100.64.0.1/x",
    "169.254.169.254/latest",
    "[fe80::1]/x",
    "[fd00::1]/x",
    "224.0.0.1/x",
    "[ff02::1]/x",
    "240.0.0.1/x",
]


@pytest.mark.parametrize("reference", INTERNAL)
def test_internal_registries_are_refused_unless_allowed_by_name(reference: str) -> None:
    with pytest.raises(ValidationError) as refused:
        check_registry(reference)
    assert "unreachable" in refused.value.message
    assert "allowed_registries" in (refused.value.hint or "")
    name, host, _ = registry_name(reference)
    check_registry(reference, allowed=[name])
    check_registry(reference, allowed=[host])


def test_the_hosts_own_address_is_refused() -> None:
    own = _own_address()
    if own is None:
        pytest.skip("this host has no non-loopback IPv4 address")
    with pytest.raises(ValidationError):
        check_registry(f"{own}:5000/x")


def test_a_name_resolving_inside_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # As a public-looking name whose DNS answer is 127.0.0.1 (or a rebinding one).
    def answer(host: str, port: int, **_: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(registry.socket, "getaddrinfo", answer)
    with pytest.raises(ValidationError):
        check_registry("registry.example.com/x")


def test_a_public_registry_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    def answer(host: str, port: int, **_: Any) -> list[Any]:
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2606:4700::1", port, 0, 0))]

    monkeypatch.setattr(registry.socket, "getaddrinfo", answer)
    check_registry("ghcr.io/acme/web:v1")


def test_a_refused_registry_is_never_contacted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ran: list[object] = []
    monkeypatch.setattr(registry.hostcmd, "run", lambda *a, **k: ran.append(a))
    ref = registry.ImageRef("docker", reference="localhost:18443/clinic/web:v1")
    with pytest.raises(ValidationError):
        registry.copy_from_registry(ref, tmp_path / "copy")
    assert ran == []

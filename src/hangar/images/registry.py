"""Images from registries, copied with skopeo into an organization's image store.

``resolve`` turns what a person names into a layout in the organization's
store and the manifest digest that pins it:

- ``docker://REF``: copied from a registry with skopeo. The registry's host
  must resolve only to public addresses (``check_registry``), unless the
  operator allows it by name in ``allowed_registries``: the control plane is
  not a way to reach services on its own host or network.
- ``sha256:HEX``: an image the organization uploaded (or copied) before.
- ``oci:/ABSOLUTE/PATH[:TAG]``: only inside a directory the operator listed in
  ``local_image_dirs``; any other host path is refused.

Errors about a registry say "registry unreachable" and nothing of what
answered; the server log keeps the details.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import secrets
import shutil
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hangar import hostcmd
from hangar.errors import CommandError, ConfigError, UpstreamError, ValidationError
from hangar.images.layouts import LayoutStore, is_digest_ref
from hangar.images.oci import ImageRef, parse_image_ref, read_manifest

__all__ = [
    "check_registry",
    "copy_from_registry",
    "internal_addresses",
    "registry_name",
    "resolve",
]

log = logging.getLogger("hangar.images")

# A registry reference: [host[:port]/]path[:tag][@sha256:digest], as Docker spells them.
_REFERENCE = re.compile(
    r"^(?:(?:[a-z0-9]+(?:[.-][a-z0-9]+)*|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?/)?"
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def registry_name(reference: str) -> tuple[str, str, int]:
    """The registry of a reference: its name (``host[:port]``), host and port.

    As Docker reads a reference, the first component is a registry only if it
    has a dot or a colon, is bracketed, or is ``localhost``; otherwise the
    image is on Docker Hub.
    """
    first, slash, _ = reference.partition("/")
    if not slash or not (
        "." in first or ":" in first or first.startswith("[") or first == "localhost"
    ):
        return "docker.io", "registry-1.docker.io", 443
    if first.startswith("["):
        host, _, rest = first[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = first.partition(":")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValidationError(f"registry {first!r} has a bad port")
    return first, host, int(port) if port else 443


def _internal(address: IPAddress) -> bool:
    """Loopback, link-local, private, unique-local, multicast, unspecified, reserved..."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and _internal(embedded):
            return True
    return (
        not address.is_global
        or address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
    )


def _own(address: IPAddress) -> bool:
    """Whether ``address`` is one of this host's: only those can be bound to."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError:
            return False
    return True


def internal_addresses(host: str, port: int) -> list[str]:
    """The internal (or this host's own) addresses ``host`` resolves to; OSError if it does not.

    An empty list means every address is public. Also used for other URLs
    the control plane calls out to on a tenant's behalf (log sinks).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}
    except (UnicodeError, ValueError) as exc:
        raise OSError(str(exc)) from exc
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    return sorted(str(a) for a in addresses if _internal(a) or _own(a))


def check_registry(reference: str, allowed: Sequence[str] = ()) -> None:
    """Refuse a registry that resolves to an internal or this host's own address.

    ``allowed`` names registries (``host`` or ``host:port``, as in the
    reference) the operator trusts wherever they resolve. The refusal reads
    like any unreachable registry, so it tells nothing of the network.
    """
    name, host, port = registry_name(reference)
    if name in allowed or host in allowed:
        return
    unreachable = ValidationError(
        f"registry {name} unreachable",
        hint="a registry on a private or local address must be allowed by name in the"
        " server's allowed_registries setting",
    )
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}
    except (OSError, UnicodeError, ValueError) as exc:
        log.warning("registry %s does not resolve: %s", name, exc)
        raise unreachable from exc
    refused = sorted(str(a) for a in addresses if _internal(a) or _own(a))
    if refused or not addresses:
        log.warning("registry %s refused: it resolves to %s", name, ", ".join(refused))
        raise unreachable


def copy_from_registry(
    ref: ImageRef,
    into: Path,
    *,
    insecure: Sequence[str] = (),
    allowed: Sequence[str] = (),
    timeout: float = 1800,
) -> ImageRef:
    """Copy ``docker://…`` into a new local OCI layout with skopeo; the layout's ref.

    ``insecure`` names registries (``host:port``) reached without TLS
    verification: test registries on loopback, never a production one.
    """
    assert ref.kind == "docker"
    if not _REFERENCE.fullmatch(ref.reference):
        raise ValidationError(f"{ref} is not a registry reference", hint="docker://HOST/NAME:TAG")
    check_registry(ref.reference, allowed)
    registry = registry_name(ref.reference)[0]
    argv = ["skopeo", "copy", "--quiet"]
    if registry in insecure:
        argv.append("--src-tls-verify=false")
    into.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        hostcmd.run([*argv, str(ref), f"oci:{into}:latest"], timeout=timeout)
    except CommandError as exc:
        shutil.rmtree(into, ignore_errors=True)
        if exc.returncode == 127:
            raise ConfigError("skopeo is not installed", hint="apt-get install skopeo") from exc
        # What answered (a certificate, a plain-HTTP server, a refused port)
        # stays in the server's log: telling the caller would map the network.
        log.warning("copying %s failed: %s", ref, exc.stderr.strip()[-2000:])
        raise UpstreamError(
            f"copying {ref} failed: registry unreachable",
            hint="check the name and tag; the server's log has the details",
        ) from None
    return ImageRef("oci", path=into, tag="latest")


@contextmanager
def resolve(
    text: str,
    store: LayoutStore,
    org_id: str,
    *,
    insecure: Sequence[str] = (),
    allowed: Sequence[str] = (),
) -> Iterator[tuple[str, str]]:
    """An image as the layout machines run it from, and its manifest digest (the pin).

    See the module docstring for what ``text`` may name. The layout is in the
    organization's store (or an operator's ``local_image_dirs``) and was read
    through the store's rules; nothing else on the host is opened.
    """
    if is_digest_ref(text):
        ref = store.find(org_id, text)
        manifest = read_manifest(ref)
        if manifest.digest != text:
            raise ValidationError(f"stored image {text} reads as {manifest.digest}")
        yield str(ref), manifest.digest
        return
    ref = parse_image_ref(text)
    if ref.kind == "docker":
        copied = store.org_dir(org_id) / f".copy-{secrets.token_hex(8)}"
        try:
            copy_from_registry(ref, copied, insecure=insecure, allowed=allowed)
            manifest = store.adopt(org_id, ImageRef("oci", path=copied, tag="latest"))
        finally:
            shutil.rmtree(copied, ignore_errors=True)
        yield f"oci:{store.layout(org_id, manifest.digest)}", manifest.digest
        return
    if ref.path is None or not ref.path.is_absolute():
        raise ValidationError(
            f"image {text[:200]!r} is neither a registry reference nor an uploaded image",
            hint="hangar deploy --image ./LAYOUT uploads a layout; docker://REF copies one",
        )
    if not store.extra_dirs:
        raise ValidationError(
            "the server does not read images from host paths",
            hint="upload the layout (hangar deploy --image ./DIR), or copy it from a registry"
            " with docker://",
        )
    store.require_inside(ref)
    yield str(ref), read_manifest(ref).digest

"""A host joins the installation once, and keeps who it is on its own disk.

``join`` trades a one-time join token for a client certificate: it fetches
the installation's CA certificate and accepts it only if its fingerprint is
the one the token pins, makes a key on this host, and sends only a
certificate request. The identity (key, certificate, CA, ids) lives under
``<agent dir>/identity``, 0700, key 0600.
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from hangar.agent.service import host_memory_mb
from hangar.crypto.hostcert import csr_for, new_host_key, pin_matches
from hangar.domain.jointoken import parse_join_token
from hangar.errors import ApiError, ConfigError, HangarError
from hangar.hostfs import write_private

__all__ = ["Identity", "join", "problem", "tls_context"]


@dataclass(frozen=True)
class Identity:
    """Who this host is to the control plane, and where to reach it."""

    directory: Path
    host_id: str
    name: str
    region: str
    api_url: str
    agent_url: str

    @property
    def key_file(self) -> Path:
        return self.directory / "host.key"

    @property
    def cert_file(self) -> Path:
        return self.directory / "host.crt"

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    @classmethod
    def load(cls, agent_dir: Path) -> Identity | None:
        path = agent_dir / "identity" / "agent.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(directory=agent_dir / "identity", **data)

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "directory"}
        tmp = self.directory / "agent.json.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, self.directory / "agent.json")


def problem(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
        detail, hint = str(body.get("detail") or body.get("title")), body.get("hint")
    except ValueError:
        detail, hint = f"{response.status_code} {response.reason_phrase}", None
    return ApiError(response.status_code, detail, hint=hint)


def tls_context(ca_file: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def _agent_url(api_url: str, port: int) -> str:
    parts = urlsplit(api_url)
    host = parts.hostname or "localhost"
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit(("https", netloc, "", "", ""))


def join(api_url: str, token: str, agent_dir: Path, *, name: str, timeout: float = 30) -> Identity:
    """Join the installation at ``api_url`` with a one-time ``token``."""
    parsed = parse_join_token(token)
    api_url = api_url.rstrip("/")
    if urlsplit(api_url).scheme != "https":
        raise ConfigError(f"--api must be an https:// URL, not {api_url!r}")
    directory = agent_dir / "identity"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    try:
        # The CA is not trusted yet: it is fetched unverified and accepted
        # only if it is the one the token pins.
        with httpx.Client(verify=False, timeout=timeout) as plain:  # noqa: S501 - pinned below
            response = plain.get(f"{api_url}/v1/ca")
        if response.status_code != 200:
            raise problem(response)
        ca_pem = str(response.json()["certificate"]).encode()
        pin_matches(ca_pem, parsed.pin)
        (directory / "ca.crt").write_bytes(ca_pem)
        key_pem = new_host_key()
        with httpx.Client(verify=tls_context(directory / "ca.crt"), timeout=timeout) as client:
            response = client.post(
                f"{api_url}/v1/hosts/join",
                json={
                    "token": token,
                    "csr": csr_for(key_pem, name).decode(),
                    "name": name,
                    "memory_mb": host_memory_mb(),
                },
            )
    except httpx.HTTPError as exc:
        raise HangarError(
            f"cannot reach the Hangar API at {api_url}: {exc}", hint="check --api"
        ) from exc
    if response.status_code != 201:
        raise problem(response)
    body = response.json()
    write_private(directory / "host.key", key_pem)
    (directory / "host.crt").write_text(body["certificate"])
    identity = Identity(
        directory=directory,
        host_id=body["host_id"],
        name=body["name"],
        region=body["region"],
        api_url=api_url,
        agent_url=_agent_url(api_url, int(body["agent_port"])),
    )
    identity.save()
    return identity

"""Settings for the server and the CLI, read in one place, in one order.

Order (later wins): defaults < config file < ``HANGAR_*`` environment < flags.
A field ``listen_port`` is set in the file as ``listen_port = 8443``, in the
environment as ``HANGAR_LISTEN_PORT=8443`` and by the flag ``--listen-port``.
Unknown keys in the file are errors, as are values of the wrong type.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from hangar.errors import ConfigError

__all__ = ["ClientSettings", "ServerSettings", "client_config_path", "load_settings"]

ENV_PREFIX = "HANGAR_"


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8443, ge=0, le=65535)
    database_url: str = ""
    kek_file: Path | None = None
    # Where the key-encryption key lives: a 0600 file (default), an environment
    # variable, or a PKCS#11 token (an HSM; the key never leaves it).
    kek_provider: Literal["file", "env", "pkcs11"] = "file"
    kek_env: str = Field(default="HANGAR_KEK_HEX", pattern=r"^[A-Z_][A-Z0-9_]*$")
    pkcs11_module: Path = Path("/usr/lib/softhsm/libsofthsm2.so")
    pkcs11_token: str = "hangar"  # noqa: S105 - the token's label, not a password
    pkcs11_pin_file: Path | None = None
    pkcs11_key_label: str = Field(
        default="hangar-kek", pattern=r"^[A-Za-z0-9_.]+(-[A-Za-z0-9_.]+)*$"
    )
    audit_checkpoint_every: int = Field(default=100, ge=1, le=1_000_000)
    # A chain that moved is also checkpointed this often, so the newest events
    # are covered by a signed (and witnessed) checkpoint within this time.
    audit_checkpoint_seconds: float = Field(default=60, ge=1, le=86400)
    # Where signed checkpoints go as they are made, outside the database:
    # file:///PATH (an append-only file on another path), syslog+udp://HOST:PORT
    # or syslog+unix:///dev/log (RFC 5424). See docs/audit.md.
    audit_witness: list[str] = Field(default=[], max_length=8)
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    tls_hostnames: list[str] = ["localhost", "127.0.0.1", "::1"]
    log_level: str = Field(default="info", pattern="^(critical|error|warning|info|debug)$")
    # Hangar's own log lines on standard error: text, or one JSON object a line.
    log_format: Literal["text", "json"] = "text"
    # The operator's sink for the server's own logs (and its agent's): they
    # may mention any organization, so never an organization's sink. Empty
    # URL: not shipped. The credential file holds a Splunk HEC token or an
    # Elasticsearch API key. See docs/logs.md.
    own_log_sink_kind: Literal["loki", "elasticsearch", "splunk-hec", "syslog"] = "loki"
    own_log_sink_url: str = ""
    own_log_sink_credential_file: Path | None = None
    own_log_sink_index: str | None = None
    agent: bool = True
    agent_dir: Path | None = None
    host_name: str = ""
    region: str = Field(default="local", pattern=r"^[a-z][a-z0-9-]{0,31}$")
    tick_seconds: float = Field(default=0.5, gt=0, le=60)
    # Agents of other hosts reach the control plane here, over mutual TLS only.
    agent_listen_port: int = Field(default=8444, ge=0, le=65535)
    host_cert_seconds: int = Field(default=7 * 86400, ge=30, le=366 * 86400)
    # Registries (host:port) copied from without TLS verification: for a test
    # registry on loopback only.
    insecure_registries: list[str] = []
    # Registries (host or host:port, as written in docker:// references) that
    # may be copied from although they resolve to a loopback, private,
    # link-local or this host's own address. Every other registry must
    # resolve to public addresses only.
    allowed_registries: list[str] = []
    # Log sink hosts (as written in the sink's URL) that may be shipped to
    # although they resolve to a loopback, private or this host's own address.
    allowed_log_sink_hosts: list[str] = []
    # Backup repository hosts (as written in the repository's URL) that
    # organizations may use although they resolve to a loopback, private or
    # this host's own address.
    allowed_backup_hosts: list[str] = []
    # Where organizations may keep restic repositories on this server's disks
    # (each under ROOT/ORG_ID/); unset: only rest: and s3: repositories.
    backup_local_root: Path | None = None
    # Each log sink's disk buffer: records wait there while the sink is down;
    # past this many bytes the oldest are dropped (counted, and audited).
    log_sink_buffer_bytes: int = Field(default=64 << 20, ge=64 << 10, le=16 << 30)
    # Server directories whose OCI layouts `oci:/PATH` may name (read without
    # following links). Empty, the default: images are only uploaded or copied
    # from registries.
    local_image_dirs: list[Path] = []
    # An image upload (a tar of an OCI layout): its size cap and time limit.
    max_image_upload_bytes: int = Field(default=8 << 30, ge=1 << 20, le=64 << 30)
    image_upload_seconds: float = Field(default=3600, ge=10, le=86400)
    # A client must finish sending a request's headers this long after it
    # connects (or after its last response); an idle keep-alive connection is
    # closed after http_keepalive_seconds.
    http_header_seconds: float = Field(default=20, ge=1, le=600)
    http_keepalive_seconds: float = Field(default=5, ge=1, le=600)
    # The URL people's browsers reach this API at (identity providers redirect
    # back to PUBLIC_URL/web/callback); empty: https://<first tls_hostname>:<listen_port>.
    public_url: str = Field(default="", pattern=r"^$|^https://[A-Za-z0-9.:\[\]-]+(:[0-9]{1,5})?$")
    # How often each signed-in person's identity provider is asked (with its
    # refresh token) whether it still vouches for them; a refusal offboards them.
    idp_check_seconds: float = Field(default=300, ge=30, le=86400)
    # Isolate this host's machines with nftables (off only to debug a host).
    firewall: bool = True
    # Answer machines' .internal names on this host (UDP/TCP 53 on a private address).
    dns: bool = True
    # Join the WireGuard mesh between hosts: ADDRESS:PORT other hosts reach this one at.
    mesh_endpoint: str = ""
    mesh_port: int = Field(default=51820, ge=1, le=65535)
    # How this host encrypts volumes: auto (LUKS2 where device-mapper is, else gocryptfs).
    volume_backend: Literal["auto", "luks2", "gocryptfs"] = "auto"
    # The edge (HAProxy) on this host: where it listens, and the domain under
    # which every app answers as <app>.<edge_domain>.
    edge: bool = True
    edge_listen_host: str = "::"
    edge_http_port: int = Field(default=80, ge=1, le=65535)
    edge_https_port: int = Field(default=443, ge=1, le=65535)
    edge_metrics_port: int = Field(default=8405, ge=0, le=65535)
    edge_domain: str = Field(
        default="apps.localhost", pattern=r"^$|^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
    )
    # The ports apps' TCP services ([[services.ports]]) may take on the edge,
    # inclusive: an operator keeps them clear of everything else on the host.
    edge_service_port_min: int = Field(default=10000, ge=1, le=65535)
    edge_service_port_max: int = Field(default=19999, ge=1, le=65535)
    # The DNS resolver ("host:port") that checks TXT proofs of control of host
    # names; empty: the first nameserver in /etc/resolv.conf.
    dns_proof_resolver: str = ""
    # What `certs add` tells users to point their DNS at (a name or addresses).
    edge_dns_target: str = ""
    # ACME: the directory (Let's Encrypt by default), a CA bundle to trust it
    # by (for a test server such as Pebble), and the account's contact.
    acme_directory_url: str = "https://acme-v02.api.letsencrypt.org/directory"
    acme_ca_bundle: Path | None = None
    acme_email: str = ""
    acme_poll_seconds: float = Field(default=60.0, gt=0, le=3600)
    # Hangar's own Prometheus metrics (the API, this host's agent, the deployer,
    # ACME) at http://metrics_listen_host:metrics_port/metrics; 0: none. Plain
    # HTTP, so loopback only.
    metrics_listen_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    # The same metrics over mutual TLS, for a Prometheus on another host: only a
    # client certificate from `hangar server metrics-cert` is let in. 0: none.
    # Needs metrics_port (the loopback listener) on.
    metrics_tls_listen_host: str = "127.0.0.1"
    metrics_tls_port: int = Field(default=0, ge=0, le=65535)

    @field_validator("metrics_tls_listen_host")
    @classmethod
    def _an_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address") from None
        return value

    @field_validator("metrics_tls_port")
    @classmethod
    def _metrics_on(cls, value: int, info: ValidationInfo) -> int:
        if value and not info.data.get("metrics_port"):
            raise ValueError("metrics_tls_port needs metrics_port: metrics are off")
        return value

    @field_validator("metrics_listen_host")
    @classmethod
    def _loopback_metrics(cls, value: str) -> str:
        try:
            if ipaddress.ip_address(value).is_loopback:
                return value
        except ValueError:
            pass
        raise ValueError(
            f"{value!r} is not a loopback address: metrics are never served to a network"
        )

    @field_validator("audit_witness")
    @classmethod
    def _witnesses_are_usable(cls, urls: list[str], info: ValidationInfo) -> list[str]:
        from hangar.audit.witness import parse_witness_url

        data_dir = info.data.get("data_dir")
        for url in urls:
            parse_witness_url(url, data_dir=data_dir)
        return urls

    @property
    def effective_edge_dir(self) -> Path:
        return self.effective_agent_dir / "edge"

    @property
    def effective_agent_dir(self) -> Path:
        """Outside the 0700 data dir: machines' unprivileged uid must reach images in it."""
        return self.agent_dir or self.data_dir.with_name(self.data_dir.name + "-agent")

    @property
    def effective_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.tls_hostnames[0] if self.tls_hostnames else "localhost"
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.listen_port}"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'hangar.db'}"

    @property
    def effective_kek_file(self) -> Path:
        return self.kek_file or self.data_dir / "kek.key"

    @property
    def effective_pin_file(self) -> Path:
        return self.pkcs11_pin_file or self.data_dir / "pkcs11.pin"


class ClientSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    api_url: str = "https://127.0.0.1:8443"
    token: str | None = None
    ca_cert: Path | None = None
    timeout: float = Field(default=30.0, gt=0)


M = TypeVar("M", bound=BaseModel)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of settings")
    return data


def load_settings(
    model: type[M],
    *,
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> M:
    """Merge defaults < file < environment < flags into ``model``.

    ``flags`` holds only options the user actually gave (None values are
    ignored), so an unset flag never hides the environment.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    if file is not None:
        for key, value in _read_file(file).items():
            values[key] = value
            source[key] = str(file)
    for name, info in model.model_fields.items():
        env_name = ENV_PREFIX + name.upper()
        if env_name in environ:
            raw = environ[env_name]
            annotation = str(info.annotation)
            values[name] = json.loads(raw) if "list" in annotation and raw.startswith("[") else raw
            source[name] = env_name
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = value
            source[name] = "--" + name.replace("_", "-")
    try:
        return model.model_validate(values)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(settings)"
        where = source.get(str(first["loc"][0]) if first["loc"] else "", "defaults")
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"{where}: unknown setting {key!r}") from exc
        raise ConfigError(f"{where}: setting {key!r}: {first['msg']}") from exc


def client_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where the CLI keeps its login: ``$HANGAR_CONFIG_DIR`` or the XDG config dir."""
    environ = os.environ if environ is None else environ
    if environ.get("HANGAR_CONFIG_DIR"):
        return Path(environ["HANGAR_CONFIG_DIR"]) / "config.json"
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hangar" / "config.json"

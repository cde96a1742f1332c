"""Tables of the control-plane store (SQLAlchemy 2 declarative models).

Nothing secret is stored unwrapped: token root keys are wrapped by the KEK,
and a token's own signature is never stored at all (it can be re-derived only
with the root key, which is why revocation is by token id).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "AcmeChallenge",
    "App",
    "AppKey",
    "AuditCheckpoint",
    "AuditEvent",
    "AuditHead",
    "Base",
    "Certificate",
    "DeviceCode",
    "FactorChallenge",
    "FactorFailures",
    "Host",
    "IdentityProvider",
    "JoinToken",
    "Machine",
    "MachineEvent",
    "Membership",
    "Network",
    "Org",
    "OrgGrant",
    "OrgMfaPolicy",
    "OrgPolicyValue",
    "PendingSignin",
    "RecoveryCode",
    "Release",
    "RootKey",
    "Secret",
    "SecretVersion",
    "SecretVersionValue",
    "Setting",
    "StepUp",
    "Token",
    "User",
    "UserFactor",
    "UserIdentity",
    "UserSession",
    "Volume",
    "WireguardPeer",
]

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Org(Base):
    __tablename__ = "orgs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class User(Base):
    __tablename__ = "users"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    is_operator: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # Set by an operator (`hangar users disable`) or when the user's identity
    # provider stops vouching for them: no sign-in, no session, no token.
    disabled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class Membership(Base):
    __tablename__ = "memberships"
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class OrgGrant(Base):
    """An organization's choice of the least role holding a configurable permission.

    ``least_role`` is a role name, or ``none`` when no role holds it. A
    permission without a row keeps its default.
    """

    __tablename__ = "org_grants"
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), primary_key=True)
    permission: Mapped[str] = mapped_column(String(32), primary_key=True)
    least_role: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class App(Base):
    __tablename__ = "apps"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), index=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    created_by: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # The organization's private network its machines join ("default": the org's own).
    network: Mapped[str] = mapped_column(String(63), default="default", server_default="default")


class RootKey(Base):
    """A macaroon root key, wrapped by the KEK; org_id is NULL for user-wide tokens."""

    __tablename__ = "root_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str | None] = mapped_column(ForeignKey("orgs.id"), index=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str | None] = mapped_column(ForeignKey("orgs.id"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("root_keys.id"))
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(64))
    caveats: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # The sign-in session this token stands for (kind "session"); None for API tokens.
    session_id: Mapped[str | None] = mapped_column(ForeignKey("sessions.id"), index=True)


class UserSession(Base):
    """A person's signed-in session: what a session token (kind "session") stands for.

    Checked on every call: past ``expires_at``, idle for more than
    ``idle_timeout_s`` since ``last_seen_at``, or revoked, the token is refused.
    ``mfa_verified_at`` and ``amr`` say when and how a second factor was shown.
    """

    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    # The identity provider's name the person signed in through ("" for none).
    idp: Mapped[str] = mapped_column(String(63))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    idle_timeout_s: Mapped[int] = mapped_column(Integer)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    mfa_verified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # JSON list of authentication methods (RFC 8176 values), e.g. ["pwd", "hwk"].
    amr: Mapped[str] = mapped_column(Text, default="[]")
    # Where the session was started from (client address) and by what ("cli", "device", "web").
    client_addr: Mapped[str | None] = mapped_column(String(64))
    via: Mapped[str] = mapped_column(String(16), default="web")


class IdentityProvider(Base):
    """An OpenID Connect provider the operator configured; its client secret is KEK-wrapped."""

    __tablename__ = "identity_providers"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    issuer: Mapped[str] = mapped_column(String(500))
    client_id: Mapped[str] = mapped_column(String(255))
    # Wrapped by the KEK under a purpose bound to this provider; None for a public client.
    client_secret: Mapped[bytes | None] = mapped_column(LargeBinary)
    scopes: Mapped[str] = mapped_column(String(500))
    # The ID-token claim holding the person's groups (for organizations' group_roles).
    groups_claim: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class UserIdentity(Base):
    """A user as one identity provider knows them (its ``sub``), and what it last said."""

    __tablename__ = "user_identities"
    idp_id: Mapped[str] = mapped_column(ForeignKey("identity_providers.id"), primary_key=True)
    subject: Mapped[str] = mapped_column(String(255), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    # JSON list of the groups the last ID token named.
    groups: Mapped[str] = mapped_column(Text, default="[]")
    # The provider's refresh token, wrapped by the KEK: used to ask it, now and
    # then, whether it still vouches for the person (offboarding at the IdP).
    refresh_token: Mapped[bytes | None] = mapped_column(LargeBinary)
    last_signin_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    checked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class OrgPolicyValue(Base):
    """One key of an organization's identity policy (``hangar orgs policy``), as JSON."""

    __tablename__ = "org_policies"
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class PendingSignin(Base):
    """A sign-in under way: from the start of the IdP redirect to the session it issues.

    Bound to the browser by a ``__Host-`` cookie holding a secret whose
    SHA-256 is ``id``; ``state``, ``nonce`` and the PKCE verifier are for the
    IdP leg; ``steps`` lists what must still happen before a session is issued.
    """

    __tablename__ = "pending_signins"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(64), unique=True)
    nonce: Mapped[str] = mapped_column(String(64))
    code_verifier: Mapped[str] = mapped_column(String(128))
    idp_id: Mapped[str] = mapped_column(ForeignKey("identity_providers.id"))
    # "web" (the browser gets the session), "cli" (a loopback redirect) or "device".
    purpose: Mapped[str] = mapped_column(String(16))
    # For "cli": the loopback redirect and the CLI's PKCE challenge; for "device": the user code.
    return_to: Mapped[str] = mapped_column(String(500), default="")
    client_challenge: Mapped[str] = mapped_column(String(128), default="")
    org_hint: Mapped[str] = mapped_column(String(63), default="")
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    # JSON: the steps still to do, the claims that matter, the factors shown.
    steps: Mapped[str] = mapped_column(Text, default="[]")
    claims: Mapped[str] = mapped_column(Text, default="{}")
    client_addr: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # The one-time code handed to the CLI's loopback redirect (its SHA-256), once verified.
    cli_code: Mapped[str | None] = mapped_column(String(64), unique=True)
    done_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class DeviceCode(Base):
    """A device authorization grant (RFC 8628): a headless CLI waits while a person approves."""

    __tablename__ = "device_codes"
    # SHA-256 of the device code the CLI polls with.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_code: Mapped[str] = mapped_column(String(16), unique=True)
    client_addr: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    interval_s: Mapped[int] = mapped_column(Integer)
    last_polled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # Set when a signed-in person approves (or denies) the code on the web page.
    approved_session_id: Mapped[str | None] = mapped_column(ForeignKey("sessions.id"))
    denied: Mapped[bool] = mapped_column(Boolean, default=False)
    # Set once the CLI has collected its session: a code gives one session only.
    collected_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class AuditHead(Base):
    """The newest event of each audit chain; its row lock serialises appends."""

    __tablename__ = "audit_heads"
    chain: Mapped[str] = mapped_column(String(40), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))
    checkpointed_seq: Mapped[int] = mapped_column(Integer, default=0)


class AuditEvent(Base):
    __tablename__ = "audit_events"
    chain: Mapped[str] = mapped_column(String(40), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    time: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(254))
    token_id: Mapped[str | None] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(300))
    outcome: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str | None] = mapped_column(String(64))
    client_addr: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    __tablename__ = "audit_checkpoints"
    chain: Mapped[str] = mapped_column(String(40), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    head_hash: Mapped[str] = mapped_column(String(64))
    time: Mapped[str] = mapped_column(String(40))
    signature: Mapped[str] = mapped_column(String(128))


class Setting(Base):
    """Installation-wide facts chosen once (the private address prefix, …)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Network(Base):
    """A private network: an organization's default one, or a named one."""

    __tablename__ = "networks"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    number: Mapped[int] = mapped_column(Integer, unique=True)


class Host(Base):
    __tablename__ = "hosts"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    region: Mapped[str] = mapped_column(String(32))
    number: Mapped[int] = mapped_column(Integer, unique=True)
    state: Mapped[str] = mapped_column(String(16))  # active, cordoned, removed
    memory_mb: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_seen: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # A joined host's client certificate: only these serials are accepted (the
    # previous one until the host first uses its renewed certificate).
    cert_serial: Mapped[str | None] = mapped_column(String(40))
    prev_cert_serial: Mapped[str | None] = mapped_column(String(40))
    cert_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # An edge host runs HAProxy and is given the routing table, with keys.
    edge: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # Its WireGuard public key and where other hosts reach it (the private key
    # never leaves the host).
    mesh_public_key: Mapped[str | None] = mapped_column(String(64))
    mesh_endpoint: Mapped[str | None] = mapped_column(String(300))
    # The newest WireGuard handshake the host has seen with any peer.
    mesh_handshake_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # How the host encrypts volumes at rest ("luks2" or "gocryptfs"), as its agent
    # reported it; None until it has. A volume on the host uses this backend.
    volume_backend: Mapped[str | None] = mapped_column(String(16))
    # Whether its agent can grow a volume's file system while a machine uses it.
    volume_grows_online: Mapped[bool | None] = mapped_column(Boolean)


class JoinToken(Base):
    """A one-time, short-lived token a new host trades for its client certificate.

    Only a hash of the secret is stored; the token itself is shown once.
    """

    __tablename__ = "join_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(63))
    region: Mapped[str] = mapped_column(String(32))
    created_by: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    host_id: Mapped[str | None] = mapped_column(String(32))
    edge: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")


class Release(Base):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("app_id", "version"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    image: Mapped[str] = mapped_column(String(1000))
    # The manifest digest the image resolved to when the release was made:
    # machines run exactly this, even if the tag later moves.
    image_digest: Mapped[str | None] = mapped_column(String(80))
    config: Mapped[str] = mapped_column(Text)  # validated hangar.toml, as JSON
    strategy: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # pending, running, complete, failed
    detail: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # The app's secrets version the release's machines receive (None: no secrets).
    secrets_version: Mapped[int | None] = mapped_column(Integer)


class Machine(Base):
    __tablename__ = "machines"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id"), index=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)  # the release it should run
    desired: Mapped[str] = mapped_column(String(16))  # started, stopped, destroyed
    state: Mapped[str] = mapped_column(String(16))  # the lifecycle state last reported
    running_version: Mapped[int | None] = mapped_column(Integer)
    healthy: Mapped[bool | None] = mapped_column(Boolean)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    address: Mapped[str] = mapped_column(String(64), unique=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    # Bumped to restart the machine in place (the agent replaces it).
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    stop_signal: Mapped[str | None] = mapped_column(String(16))
    stop_timeout: Mapped[float | None] = mapped_column(Float)
    lease_nonce_hash: Mapped[str | None] = mapped_column(String(64))
    lease_owner: Mapped[str | None] = mapped_column(String(254))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # One-off machines (`machines run`, release commands): their own image and
    # command, never restarted, never moved by a deploy.
    one_off: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    image: Mapped[str | None] = mapped_column(String(1000))
    image_digest: Mapped[str | None] = mapped_column(String(80))
    args: Mapped[str | None] = mapped_column(Text)
    # What placement counts against its host's memory ([[vm]] memory).
    memory_mb: Mapped[int] = mapped_column(Integer, default=256, server_default="256")


class MachineEvent(Base):
    """What happened to a machine: state changes and requests, for `machines events`."""

    __tablename__ = "machine_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    machine_id: Mapped[str] = mapped_column(String(32), index=True)
    time: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")


class AppKey(Base):
    """An app's data key for secrets, wrapped by the KEK; one active version at a time."""

    __tablename__ = "app_keys"
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    active: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class Secret(Base):
    """A secret's value as ciphertext (never plaintext), deployed or staged.

    A name has at most one deployed row and one staged row; a staged row
    with no ciphertext stages the name's removal.
    """

    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("app_id", "name", "staged"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer)
    staged: Mapped[bool] = mapped_column(Boolean)
    ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    digest: Mapped[str | None] = mapped_column(String(64))
    key_version: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class SecretVersion(Base):
    """One version of an app's deployed secrets: every change makes the next one.

    Its values are in ``secret_version_values``, as ciphertext under the app's
    data key, exactly as sealed in ``secrets`` (never plaintext).
    """

    __tablename__ = "secret_versions"
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_by: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class SecretVersionValue(Base):
    """A name's sealed value in one secrets version; ``value_version`` is the name's
    own version, which (with org, app and name) the ciphertext is bound to."""

    __tablename__ = "secret_version_values"
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    value_version: Mapped[int] = mapped_column(Integer)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    digest: Mapped[str] = mapped_column(String(64))
    key_version: Mapped[int] = mapped_column(Integer)


class Certificate(Base):
    """A host name an app answers on at the edge, and its certificate.

    The chain is public; the private key is stored only wrapped by the KEK.
    ``status``: pending (ACME order under way), valid, failed (see
    ``last_error``; retried with backoff), imported.
    """

    __tablename__ = "certificates"
    # Many apps may claim a name; one holds it, once it proved control of it.
    __table_args__ = (
        UniqueConstraint("app_id", "hostname"),
        Index(
            "uq_certificates_proven_hostname",
            "hostname",
            unique=True,
            sqlite_where=text("proven_at IS NOT NULL"),
            postgresql_where=text("proven_at IS NOT NULL"),
        ),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id"), index=True)
    hostname: Mapped[str] = mapped_column(String(253), index=True)
    # The DNS TXT value that proves control, and when control was proven (a
    # validated ACME order or that TXT record): only then is the name held.
    proof_token: Mapped[str | None] = mapped_column(String(64))
    proven_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    source: Mapped[str] = mapped_column(String(16))  # acme, imported
    status: Mapped[str] = mapped_column(String(16))
    fullchain_pem: Mapped[str | None] = mapped_column(Text)
    key_wrapped: Mapped[bytes | None] = mapped_column(LargeBinary)
    not_before: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    not_after: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    order_url: Mapped[str | None] = mapped_column(String(500))
    last_error: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[str] = mapped_column(Text, default="")  # the order's progress, for people
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class AcmeChallenge(Base):
    """An HTTP-01 answer the edge serves while an order validates (public by design)."""

    __tablename__ = "acme_challenges"
    token: Mapped[str] = mapped_column(String(128), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(253))
    key_authorization: Mapped[str] = mapped_column(String(300))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class WireguardPeer(Base):
    """A person's device on an organization's private network, through one mesh host.

    Only the public key is stored; the private key was shown once.
    """

    __tablename__ = "wireguard_peers"
    __table_args__ = (UniqueConstraint("org_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"))
    name: Mapped[str] = mapped_column(String(63))
    network: Mapped[str] = mapped_column(String(63))
    public_key: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64), unique=True)
    gateway_host_id: Mapped[str] = mapped_column(String(32))
    created_by: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class LogSinkRow(Base):
    """Where an organization's machines' output is shipped (``hangar logs sinks``)."""

    __tablename__ = "log_sinks"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(String(2000))
    # The Elasticsearch index or data stream, or the Splunk index; None: the sink's default.
    index_name: Mapped[str | None] = mapped_column(String(100))
    # The sink's credential, wrapped by the KEK (purpose bound to the sink); never plaintext.
    credential: Mapped[bytes | None] = mapped_column(LargeBinary)
    auth: Mapped[str | None] = mapped_column(String(16))  # the credential's scheme, to list
    created_by: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class Volume(Base):
    """A persistent volume: lives on one host, held by at most one machine at a time.

    Its data key is stored only wrapped by the KEK (purpose ``volume-key:<id>``)
    and sent sealed only to the host of the machine that mounts it. Destroying
    a volume drops ``key_wrapped`` in the same transaction (crypto-shredding:
    whatever of its ciphertext remains on disk can no longer be read) and the
    host then deletes its files. Several volumes of an app may share a name:
    each machine of the app that mounts ``source = NAME`` holds one of them.

    ``encryption`` is the host's backend when the volume was made ("luks2",
    "gocryptfs"); ``state`` is ``created`` (the host has not prepared it yet),
    ``ready`` (the host made its encrypted file system) or ``destroyed``.
    """

    __tablename__ = "volumes"
    __table_args__ = (Index("ix_volumes_app_id_name", "app_id", "name"),)
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), index=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id"))
    name: Mapped[str] = mapped_column(String(63))
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id"), index=True)
    size_mb: Mapped[int] = mapped_column(Integer)
    encryption: Mapped[str] = mapped_column(String(16))
    key_wrapped: Mapped[bytes | None] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16))
    # The machine holding it (None: free); cleared once that machine is gone from its host.
    machine_id: Mapped[str | None] = mapped_column(String(32), index=True)
    created_by: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    destroyed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class BackupRepoRow(Base):
    """An organization's restic repository (``hangar backups repo set``).

    ``password`` is restic's own, generated by Hangar; it and the backend's
    credential are kept only wrapped by the KEK, under purposes bound to the
    organization, and never shown. ``last_success_at`` feeds the metric the
    "no backup for 26 hours" alert reads.
    """

    __tablename__ = "backup_repos"
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), primary_key=True)
    location: Mapped[str] = mapped_column(String(2000))
    kind: Mapped[str] = mapped_column(String(8))  # rest, s3, local
    password: Mapped[bytes] = mapped_column(LargeBinary)
    credential: Mapped[bytes | None] = mapped_column(LargeBinary)
    auth: Mapped[str | None] = mapped_column(String(16))  # the credential's kind, to show
    keep_daily: Mapped[int] = mapped_column(Integer)
    keep_weekly: Mapped[int] = mapped_column(Integer)
    keep_monthly: Mapped[int] = mapped_column(Integer)
    every_hours: Mapped[int] = mapped_column(Integer)  # the schedule: a backup this often
    created_by: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_run_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_success_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_outcome: Mapped[str | None] = mapped_column(String(16))


class VolumeJob(Base):
    """Work on a volume's files that its host does: snapshot, restore, fork, backup, drill.

    The control plane files it (``pending``); the volume's host takes it
    (``running``), does it off its loop and reports ``done`` or ``failed``
    with a result (JSON). Never holds a key or a password: a host gets the
    repository's secrets sealed to a one-time key when it takes the job.
    """

    __tablename__ = "volume_jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), index=True)
    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id", ondelete="CASCADE"), index=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    params: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(12))
    result: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(254))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class VolumeSnapshotRow(Base):
    """A snapshot of a volume, kept as ciphertext on the volume's host; ``backup_id``
    is its restic snapshot once backed up."""

    __tablename__ = "volume_snapshots"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), index=True)
    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id", ondelete="CASCADE"), index=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(16))
    consistent: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(12))  # ready, deleted
    backup_id: Mapped[str | None] = mapped_column(String(64))


class VolumeSnapshotPolicy(Base):
    """A volume's snapshot schedule, where it differs from the default (daily, kept 5 days)."""

    __tablename__ = "volume_snapshot_policies"
    volume_id: Mapped[str] = mapped_column(
        ForeignKey("volumes.id", ondelete="CASCADE"), primary_key=True
    )
    scheduled: Mapped[bool] = mapped_column(Boolean)
    keep_days: Mapped[int] = mapped_column(Integer)  # 1 to 60
    updated_by: Mapped[str] = mapped_column(String(254))
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class UserFactor(Base):
    """A person's second factor: a WebAuthn credential (public key only) or a TOTP secret.

    A TOTP secret is stored only wrapped by the KEK (purpose bound to the
    factor's id); ``last_step`` is the last time step accepted, so a code is
    never accepted twice. A WebAuthn credential whose signature counter went
    back (a cloned authenticator) is disabled, with the reason.
    """

    __tablename__ = "user_factors"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # webauthn | totp
    name: Mapped[str] = mapped_column(String(64))
    # WebAuthn: the credential id (base64url), its COSE public key, its counter.
    credential_id: Mapped[str | None] = mapped_column(String(1400), unique=True)
    public_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    sign_count: Mapped[int] = mapped_column(Integer, default=0)
    aaguid: Mapped[str | None] = mapped_column(String(36))
    # TOTP: the secret wrapped by the KEK, and the last time step accepted.
    secret_wrapped: Mapped[bytes | None] = mapped_column(LargeBinary)
    last_step: Mapped[int | None] = mapped_column(Integer)
    # A TOTP factor counts only once a code from it was confirmed.
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    disabled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    disabled_reason: Mapped[str | None] = mapped_column(String(200))


class RecoveryCode(Base):
    """A one-time recovery code, stored as its SHA-256 digest (the code was shown once)."""

    __tablename__ = "recovery_codes"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class FactorChallenge(Base):
    """A WebAuthn challenge handed out once; answered once, before it expires, or never."""

    __tablename__ = "factor_challenges"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    # register | assert (WebAuthn); link | web (a web page's one-time link, its cookie)
    purpose: Mapped[str] = mapped_column(String(16))
    # base64url of a WebAuthn challenge; for link and web, the SHA-256 of the secret
    challenge: Mapped[str] = mapped_column(String(128))
    # The token (or session) it was handed to: no other may answer it.
    token_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class FactorFailures(Base):
    """Failed second-factor attempts of a person, for backoff (reset by a success)."""

    __tablename__ = "factor_failures"
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class StepUp(Base):
    """The newest second-factor assertion made through a token (or a session's token)."""

    __tablename__ = "step_ups"
    token_id: Mapped[str] = mapped_column(ForeignKey("tokens.id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    verified_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    method: Mapped[str] = mapped_column(String(16))  # webauthn | totp | recovery


class OrgMfaPolicy(Base):
    """An organization's second-factor policy; an organization without a row: all defaults."""

    __tablename__ = "org_mfa_policies"
    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.id"), primary_key=True)
    require_mfa: Mapped[str] = mapped_column(String(16))  # webauthn | any | off
    accept_idp_mfa: Mapped[bool] = mapped_column(Boolean)
    allow_totp: Mapped[bool] = mapped_column(Boolean)
    step_up_minutes: Mapped[int] = mapped_column(Integer)
    # Organization and app tokens may take sensitive actions without a step-up.
    automation_tokens: Mapped[bool] = mapped_column(Boolean)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())

"""Roles, actions and permissions: who may do what inside an organization (pure).

Default deny: a permission names the least role that holds it; a role holds
exactly the permissions at or below its rank. Operator-only permissions
(creating organizations) belong to no organization role.

A few permissions reach what machines hold in memory rather than what Hangar
stores: reading machines' output (``logs:read``) and running commands in
them (``machines:exec``, which reads every secret the machine was given).
Each organization may move these: ``Grants`` holds, per organization, the
least role that holds each of them, or no role at all. Every other
permission is the same in every organization.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum

__all__ = ["CONFIGURABLE", "NO_ROLE", "Action", "Grants", "Permission", "Role"]


class Action(StrEnum):
    """What a token caveat can allow; every permission is one of these."""

    READ = "read"
    WRITE = "write"
    CREATE = "create"
    DELETE = "delete"
    CONTROL = "control"


class Role(StrEnum):
    VIEWER = "viewer"
    MEMBER = "member"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def at_least(self, other: Role) -> bool:
        return self.rank >= other.rank


_RANK = {Role.VIEWER: 0, Role.MEMBER: 1, Role.ADMIN: 2}


class Permission(Enum):
    """(name, action, least role; None means installation operators only).

    For the configurable permissions the least role is the default; an
    organization's ``Grants`` may move it. Check with ``Principal.check``.
    """

    WHOAMI = ("whoami", Action.READ, Role.VIEWER)
    # One's own second factors and step-ups (never another person's).
    FACTORS_WRITE = ("factors:write", Action.WRITE, Role.VIEWER)
    ORGS_READ = ("orgs:read", Action.READ, Role.VIEWER)
    ORGS_CREATE = ("orgs:create", Action.CREATE, None)
    # Which roles hold the configurable permissions of the organization.
    ORGS_WRITE = ("orgs:write", Action.WRITE, Role.ADMIN)
    HOSTS_READ = ("hosts:read", Action.READ, None)
    HOSTS_WRITE = ("hosts:write", Action.WRITE, None)
    KEYS_ROTATE = ("keys:rotate", Action.WRITE, None)
    MEMBERS_READ = ("members:read", Action.READ, Role.VIEWER)
    MEMBERS_WRITE = ("members:write", Action.WRITE, Role.ADMIN)
    APPS_READ = ("apps:read", Action.READ, Role.VIEWER)
    APPS_CREATE = ("apps:create", Action.CREATE, Role.MEMBER)
    APPS_DELETE = ("apps:delete", Action.DELETE, Role.ADMIN)
    APPS_DEPLOY = ("apps:deploy", Action.WRITE, Role.MEMBER)
    MACHINES_CONTROL = ("machines:control", Action.CONTROL, Role.MEMBER)
    # What machines print: whatever they print, secret values included.
    LOGS_READ = ("logs:read", Action.READ, Role.MEMBER)
    # A command in a machine reads its environment and files, secrets included.
    MACHINES_EXEC = ("machines:exec", Action.CONTROL, Role.ADMIN)
    SECRETS_READ = ("secrets:read", Action.READ, Role.MEMBER)  # names and digests only
    SECRETS_WRITE = ("secrets:write", Action.WRITE, Role.MEMBER)
    VOLUMES_READ = ("volumes:read", Action.READ, Role.VIEWER)
    VOLUMES_WRITE = ("volumes:write", Action.WRITE, Role.MEMBER)
    # Destroying a volume destroys its data for good (its key goes): admins only.
    VOLUMES_DELETE = ("volumes:delete", Action.DELETE, Role.ADMIN)
    CERTS_READ = ("certs:read", Action.READ, Role.VIEWER)
    CERTS_WRITE = ("certs:write", Action.WRITE, Role.MEMBER)
    EDGE_READ = ("edge:read", Action.READ, None)
    WIREGUARD_READ = ("wireguard:read", Action.READ, Role.MEMBER)
    # A device on the org's network reaches every machine of it: admins only.
    WIREGUARD_WRITE = ("wireguard:write", Action.WRITE, Role.ADMIN)
    TOKENS_READ = ("tokens:read", Action.READ, Role.MEMBER)
    TOKENS_CREATE = ("tokens:create", Action.CREATE, Role.MEMBER)
    TOKENS_REVOKE = ("tokens:revoke", Action.DELETE, Role.MEMBER)
    AUDIT_READ = ("audit:read", Action.READ, Role.ADMIN)
    # A sink receives every machine's output of the organization: admins choose it.
    LOG_SINKS_READ = ("log-sinks:read", Action.READ, Role.MEMBER)
    LOG_SINKS_WRITE = ("log-sinks:write", Action.WRITE, Role.ADMIN)
    AUDIT_SYSTEM_READ = ("audit:read-system", Action.READ, None)
    # Backups hold every volume's data: members list and run them; admins choose
    # the repository and restore over live data.
    BACKUPS_READ = ("backups:read", Action.READ, Role.MEMBER)
    BACKUPS_RUN = ("backups:run", Action.CONTROL, Role.MEMBER)
    BACKUPS_WRITE = ("backups:write", Action.WRITE, Role.ADMIN)
    # An export takes a volume's files off the platform, decrypted: admins only.
    VOLUMES_EXPORT = ("volumes:export", Action.READ, Role.ADMIN)
    # The installation's identity providers, and disabling users: operators only.
    IDPS_READ = ("idps:read", Action.READ, None)
    IDPS_WRITE = ("idps:write", Action.WRITE, None)
    USERS_WRITE = ("users:write", Action.WRITE, None)
    # A person's own sign-in sessions (no organization involved).
    SESSIONS_READ = ("sessions:read", Action.READ, Role.VIEWER)
    SESSIONS_REVOKE = ("sessions:revoke", Action.DELETE, Role.VIEWER)

    def __init__(self, label: str, action: Action, least_role: Role | None) -> None:
        self.label = label
        self.action = action
        self.least_role = least_role

    @classmethod
    def named(cls, label: str) -> Permission:
        """The permission called ``label`` (``logs:read``); ValueError if none is."""
        for perm in cls:
            if perm.label == label:
                return perm
        raise ValueError(f"no permission is called {label!r}")


# The permissions an organization may give to, or take from, its roles.
CONFIGURABLE = (Permission.LOGS_READ, Permission.MACHINES_EXEC)

# How the store writes "no role holds it".
NO_ROLE = "none"

_ORDER = (Role.VIEWER, Role.MEMBER, Role.ADMIN)


@dataclass(frozen=True)
class Grants:
    """One organization's choices for the configurable permissions.

    ``least`` maps a configurable permission to the least role that holds it
    there, or None when no role does; a permission it does not name keeps its
    default. Holding stays monotonic: a role above one that holds a
    permission holds it too, so granting to a role grants to the roles above
    it, and revoking from a role revokes from the roles below it.
    """

    least: Mapping[Permission, Role | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for perm in self.least:
            if perm not in CONFIGURABLE:
                raise ValueError(f"{perm.label} is not configurable per organization")

    def least_role(self, perm: Permission) -> Role | None:
        if perm in self.least:
            return self.least[perm]
        return perm.least_role

    def holds(self, perm: Permission, role: Role) -> bool:
        least = self.least_role(perm)
        return least is not None and role.at_least(least)

    def roles(self, perm: Permission) -> list[Role]:
        """The roles that hold ``perm``, least first."""
        return [r for r in _ORDER if self.holds(perm, r)]

    def grant(self, perm: Permission, role: Role) -> Grants:
        least = self.least_role(perm)
        if least is not None and least.rank <= role.rank:
            return self
        return self._with(perm, role)

    def revoke(self, perm: Permission, role: Role) -> Grants:
        if not self.holds(perm, role):
            return self
        above = [r for r in _ORDER if r.rank > role.rank]
        return self._with(perm, above[0] if above else None)

    def _with(self, perm: Permission, least: Role | None) -> Grants:
        changed = dict(self.least)
        if least == perm.least_role:
            changed.pop(perm, None)  # the default again
        else:
            changed[perm] = least
        return Grants(changed)

    def as_labels(self) -> dict[str, list[str]]:
        """``{"logs:read": ["member", "admin"], ...}`` for every configurable permission."""
        return {p.label: [r.value for r in self.roles(p)] for p in CONFIGURABLE}

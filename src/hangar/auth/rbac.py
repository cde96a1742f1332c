"""Roles, actions and permissions: who may do what inside an organization (pure).

Default deny: a permission names the least role that holds it; a role holds
exactly the permissions at or below its rank. Operator-only permissions
(creating organizations) belong to no organization role.
"""

from __future__ import annotations

from enum import Enum, StrEnum

__all__ = ["Action", "Permission", "Role"]


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
    """(name, action, least role; None means installation operators only)."""

    WHOAMI = ("whoami", Action.READ, Role.VIEWER)
    ORGS_READ = ("orgs:read", Action.READ, Role.VIEWER)
    ORGS_CREATE = ("orgs:create", Action.CREATE, None)
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
    SECRETS_READ = ("secrets:read", Action.READ, Role.MEMBER)  # names and digests only
    SECRETS_WRITE = ("secrets:write", Action.WRITE, Role.MEMBER)
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

    def __init__(self, label: str, action: Action, least_role: Role | None) -> None:
        self.label = label
        self.action = action
        self.least_role = least_role

    def granted_to(self, role: Role) -> bool:
        return self.least_role is not None and role.at_least(self.least_role)

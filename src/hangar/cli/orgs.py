"""``hangar orgs``: organizations and their members."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from hangar.cli.common import JsonOpt, YesOpt, client
from hangar.cli.output import confirm, emit, fields, table
from hangar.config.appconfig import parse_duration
from hangar.errors import ValidationError

app = typer.Typer(name="orgs", help="Organizations and members.", no_args_is_help=True)
members = typer.Typer(name="members", help="Who belongs to an organization.", no_args_is_help=True)
app.add_typer(members)

Org = Annotated[str, typer.Argument(help="organization name")]
RoleOpt = Annotated[str, typer.Option(help="admin, member or viewer")]


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOpt = False) -> None:
    """Organizations you belong to."""
    items = client(ctx).paged("/v1/orgs")
    if json_out:
        emit(items)
    else:
        table(items, [("name", "NAME"), ("role", "ROLE"), ("id", "ID"), ("created_at", "CREATED")])


def _show(data: dict[str, object], json_out: bool) -> None:
    fields(data, ("name", "id", "role", "created_at"), json_out, width=15)
    if json_out:
        return
    permissions = data.get("permissions") or {}
    assert isinstance(permissions, dict)
    for label, roles in sorted(permissions.items()):
        typer.echo(f"{label:<15}{', '.join(roles) if roles else '(no role)'}")


@app.command()
def show(ctx: typer.Context, org: Org, json_out: JsonOpt = False) -> None:
    """One organization, and which roles hold its configurable permissions."""
    _show(client(ctx).get(f"/v1/orgs/{org}"), json_out)


GrantOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--grant",
        help="ROLE=PERMISSION: give it to ROLE (and the roles above it); repeatable",
        show_default=False,
    ),
]
RevokeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--revoke",
        help="ROLE=PERMISSION: take it from ROLE (and the roles below it); repeatable",
        show_default=False,
    ),
]


def _pairs(values: list[str] | None, flag: str) -> list[dict[str, str]]:
    out = []
    for value in values or []:
        role, sep, permission = value.partition("=")
        if not sep or not role.strip() or not permission.strip():
            raise ValidationError(
                f"{flag} {value!r}: expected ROLE=PERMISSION", hint=f"e.g. {flag} member=logs:read"
            )
        out.append({"role": role.strip(), "permission": permission.strip()})
    return out


@app.command("set")
def set_(
    ctx: typer.Context,
    org: Org,
    grant: GrantOpt = None,
    revoke: RevokeOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Choose which roles may read machines' output and run commands in machines.

    Two permissions reach what machines hold rather than what Hangar stores,
    and each organization chooses who holds them (organization admins):

    \b
      logs:read      read machines' output (hangar logs); default: member
      machines:exec  run commands in machines (hangar machines exec);
                     default: admin. It can read every secret of the machines.

    A role above one that holds a permission holds it too. Revocations apply
    before grants; revoking from admin leaves no role holding it. Audited as
    org.set_grants.

    \b
      hangar orgs set acme --grant member=machines:exec
      hangar orgs set acme --revoke member=logs:read --revoke admin=machines:exec
    """
    body = {"grant": _pairs(grant, "--grant"), "revoke": _pairs(revoke, "--revoke")}
    if not body["grant"] and not body["revoke"]:
        raise ValidationError("nothing to change", hint="give --grant or --revoke ROLE=PERMISSION")
    _show(client(ctx).request("PATCH", f"/v1/orgs/{org}", json=body), json_out)


@app.command()
def create(ctx: typer.Context, name: Org, json_out: JsonOpt = False) -> None:
    """Create an organization (installation operators); you become its admin."""
    data = client(ctx).request("POST", "/v1/orgs", json={"name": name})
    emit(data) if json_out else typer.echo(f"Created organization {data['name']} ({data['id']}).")


@members.command("list")
def members_list(ctx: typer.Context, org: Org, json_out: JsonOpt = False) -> None:
    """Members of an organization and their roles."""
    items = client(ctx).paged(f"/v1/orgs/{org}/members", limit=200)
    if json_out:
        emit(items)
    else:
        table(items, [("email", "EMAIL"), ("role", "ROLE"), ("created_at", "SINCE")])


@members.command("add")
def members_add(ctx: typer.Context, org: Org, email: str, role: RoleOpt = "member") -> None:
    """Add a person by email with a role."""
    client(ctx).request("POST", f"/v1/orgs/{org}/members", json={"email": email, "role": role})
    typer.echo(f"Added {email} to {org} as {role}.")


@members.command("set-role")
def members_set_role(
    ctx: typer.Context,
    org: Org,
    email: str,
    role: Annotated[str, typer.Argument(help="admin, member or viewer")],
) -> None:
    """Change a member's role."""
    client(ctx).request("PATCH", f"/v1/orgs/{org}/members/{email}", json={"role": role})
    typer.echo(f"{email} is now {role} in {org}.")


@members.command("remove")
def members_remove(ctx: typer.Context, org: Org, email: str, yes: YesOpt = False) -> None:
    """Remove a member (their tokens for this organization stop working)."""
    confirm(f"Remove {email} from {org}?", yes)
    client(ctx).request("DELETE", f"/v1/orgs/{org}/members/{email}")
    typer.echo(f"Removed {email} from {org}.")


policy = typer.Typer(
    name="policy",
    help="How an organization's members must sign in (identity provider, domains, sessions, "
    "second factors).",
    no_args_is_help=True,
)
app.add_typer(policy)


def _seconds(text: str) -> int:
    return int(parse_duration(text))


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _group_roles(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in _list(text):
        group, sep, role = part.rpartition(":")
        if not sep or not group:
            raise ValidationError(f"{part!r} is not GROUP:ROLE", hint="e.g. group_roles=eng:member")
        out[group] = role
    return out


# How each key's VALUE is read on the command line; a key not here is sent as JSON if it
# parses as JSON (true, 15, ["a"]), else as text.
POLICY_VALUES: dict[str, Any] = {
    "sso_idp": str,
    "email_domains": _list,
    "group_roles": _group_roles,
    "session_lifetime": _seconds,
    "idle_timeout": _seconds,
}


def _policy_value(key: str, text: str) -> Any:
    reader = POLICY_VALUES.get(key)
    if reader is not None:
        try:
            return reader(text)
        except ValueError as exc:
            raise ValidationError(f"{key}: {exc}") from None
    try:
        return json.loads(text)
    except ValueError:
        return text


@policy.command("show")
def policy_show(ctx: typer.Context, org: Org, json_out: JsonOpt = False) -> None:
    """The organization's identity policy (every key, defaults included)."""
    data = client(ctx).get(f"/v1/orgs/{org}/policy")
    fields(data, sorted(data), json_out, width=20)


@policy.command("set")
def policy_set(
    ctx: typer.Context,
    org: Org,
    assignments: Annotated[
        list[str] | None, typer.Argument(help="KEY=VALUE, e.g. sso_idp=okta idle_timeout=15m")
    ] = None,
    unset: Annotated[
        list[str] | None, typer.Option(help="a key to put back to its default (repeatable)")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Change keys of the organization's identity policy (admins; audited).

    Keys: sso_idp=NAME (members must sign in through it), email_domains=a.com,b.com,
    group_roles=GROUP:ROLE,... (just-in-time membership from IdP groups),
    session_lifetime=12h, idle_timeout=1h. Second factors: require_mfa=webauthn|any|off,
    accept_idp_mfa=true|false, allow_totp=true|false, step_up_minutes=15,
    automation_tokens=true|false. A policy change needs a fresh second factor
    (`hangar auth step-up`) once the organization requires one.
    """
    values: dict[str, Any] = {}
    for item in assignments or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValidationError(f"{item!r} is not KEY=VALUE")
        values[key.strip()] = _policy_value(key.strip(), text)
    body = {"set": values, "unset": unset or []}
    if not values and not body["unset"]:
        raise ValidationError("nothing to change", hint="give KEY=VALUE or --unset KEY")
    data = client(ctx).request("PATCH", f"/v1/orgs/{org}/policy", json=body)
    fields(data, sorted(data), json_out, width=20)

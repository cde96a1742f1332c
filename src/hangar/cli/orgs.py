"""``hangar orgs``: organizations and their members."""

from __future__ import annotations

from typing import Annotated

import typer

from hangar.cli.common import JsonOpt, YesOpt, client
from hangar.cli.output import confirm, emit, fields, table

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


@app.command()
def show(ctx: typer.Context, org: Org, json_out: JsonOpt = False) -> None:
    """One organization."""
    fields(
        client(ctx).get(f"/v1/orgs/{org}"), ("name", "id", "role", "created_at"), json_out, width=11
    )


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

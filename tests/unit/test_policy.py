from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hangar.auth.rbac import CONFIGURABLE, Action, Grants, Permission, Role
from hangar.auth.tokens import Principal, Scope, grants_from_rows, parse_caveats
from hangar.errors import AuthError, NotFound, PermissionDenied

ORG, OTHER = "org_a", "org_b"


def principal(
    role: Role = Role.ADMIN, caveats: tuple[str, ...] = (), operator: bool = False
) -> Principal:
    return Principal(
        user_id="usr",
        email="u@example.com",
        is_operator=operator,
        token_id="tok",
        scope=parse_caveats(caveats),
        roles={ORG: role},
    )


def test_caveats_intersect() -> None:
    scope = parse_caveats(
        (
            "apps = a,b",
            "apps = b,c",
            "actions = read,write",
            "actions = read",
            "expires = 200",
            "expires = 100",
            "not-before = 5",
            "not-before = 9",
        )
    )
    assert scope.apps == frozenset({"b"})
    assert scope.actions == frozenset({Action.READ})
    assert scope.expires == 100 and scope.not_before == 9


@pytest.mark.parametrize(
    "caveat", ["color = red", "apps", "apps = ", "expires = soon", "actions = fly"]
)
def test_unknown_or_malformed_caveats_invalidate_the_token(caveat: str) -> None:
    with pytest.raises(AuthError):
        parse_caveats((caveat,))


@pytest.mark.parametrize("perm", list(Permission))
@pytest.mark.parametrize("role", list(Role))
def test_role_matrix(perm: Permission, role: Role) -> None:
    p = principal(role)
    if perm is Permission.WHOAMI:
        p.check(perm, org_id=None)
        return
    if perm.least_role is None:
        with pytest.raises(PermissionDenied):
            p.check(perm, org_id=None)
        return
    if role.at_least(perm.least_role):
        p.check(perm, org_id=ORG)
    else:
        with pytest.raises(PermissionDenied):
            p.check(perm, org_id=ORG)


def test_viewer_cannot_mutate_and_admin_can() -> None:
    with pytest.raises(PermissionDenied):
        principal(Role.VIEWER).check(Permission.APPS_CREATE, org_id=ORG)
    principal(Role.MEMBER).check(Permission.APPS_CREATE, org_id=ORG)
    with pytest.raises(PermissionDenied):
        principal(Role.MEMBER).check(Permission.APPS_DELETE, org_id=ORG)


def test_another_org_is_not_found_not_forbidden() -> None:
    with pytest.raises(NotFound):
        principal().check(Permission.APPS_READ, org_id=OTHER)


def test_org_caveat_hides_the_users_other_orgs() -> None:
    p = Principal(
        user_id="u",
        email="e@example.com",
        is_operator=False,
        token_id="t",
        scope=parse_caveats((f"org = {ORG}",)),
        roles={ORG: Role.ADMIN, OTHER: Role.ADMIN},
    )
    p.check(Permission.APPS_READ, org_id=ORG)
    with pytest.raises(NotFound):
        p.check(Permission.APPS_READ, org_id=OTHER)


def test_app_scoped_token_stays_inside_its_apps() -> None:
    p = principal(caveats=("apps = web",))
    p.check(Permission.APPS_READ, org_id=ORG, app="web")
    p.check(Permission.APPS_READ, org_id=ORG)  # listing, filtered by the router
    with pytest.raises(PermissionDenied):
        p.check(Permission.APPS_READ, org_id=ORG, app="db")
    with pytest.raises(PermissionDenied):
        p.check(Permission.APPS_CREATE, org_id=ORG)
    with pytest.raises(PermissionDenied):
        p.check(Permission.MEMBERS_READ, org_id=ORG)


def test_operator_permission_needs_an_unrestricted_operator_token() -> None:
    principal(operator=True).check(Permission.ORGS_CREATE, org_id=None)
    with pytest.raises(PermissionDenied):
        principal(operator=False).check(Permission.ORGS_CREATE, org_id=None)
    with pytest.raises(PermissionDenied):
        principal(operator=True, caveats=(f"org = {ORG}",)).check(
            Permission.ORGS_CREATE, org_id=None
        )


def _allowed(p: Principal) -> set[tuple[Permission, str | None, str | None]]:
    out = set()
    for perm in Permission:
        for org in (None, ORG, OTHER):
            for app in (None, "web", "db"):
                try:
                    p.check(perm, org_id=org, app=app)
                except (PermissionDenied, NotFound):
                    continue
                out.add((perm, org, app))
    return out


caveat_strategy = st.one_of(
    st.builds(
        lambda xs: "apps = " + ",".join(xs),
        st.lists(st.sampled_from(["web", "db", "api"]), min_size=1, max_size=3),
    ),
    st.builds(
        lambda xs: "actions = " + ",".join(xs),
        st.lists(st.sampled_from([a.value for a in Action]), min_size=1, max_size=5),
    ),
    st.sampled_from([f"org = {ORG}", f"org = {OTHER}"]),
)


@given(
    st.lists(caveat_strategy, max_size=3),
    st.lists(caveat_strategy, min_size=1, max_size=3),
    st.sampled_from(list(Role)),
    st.booleans(),
)
def test_attenuation_never_widens(base: list[str], extra: list[str], role: Role, op: bool) -> None:
    before = principal(role, tuple(base), op)
    after = principal(role, tuple(base + extra), op)
    assert _allowed(after) <= _allowed(before)


def test_scope_defaults_allow_everything_the_role_allows() -> None:
    assert Scope().unrestricted_in_org


configurable = st.sampled_from(CONFIGURABLE)
roles = st.sampled_from(list(Role))
steps = st.lists(st.tuples(st.booleans(), configurable, roles), max_size=8)


@given(steps)
def test_grants_stay_monotonic_and_do_what_they_say(
    ops: list[tuple[bool, Permission, Role]],
) -> None:
    grants = Grants()
    for is_grant, perm, role in ops:
        before = grants
        grants = grants.grant(perm, role) if is_grant else grants.revoke(perm, role)
        if is_grant:
            assert grants.holds(perm, role)
        else:
            assert not any(grants.holds(perm, r) for r in Role if not r.at_least(role) or r is role)
        for other in CONFIGURABLE:
            if other is not perm:
                assert grants.roles(other) == before.roles(other)
        for p in CONFIGURABLE:
            held = [grants.holds(p, r) for r in (Role.VIEWER, Role.MEMBER, Role.ADMIN)]
            assert held == sorted(held)  # a role above one that holds it holds it too


@given(steps, st.sampled_from(list(Permission)), roles)
def test_grants_never_touch_a_permission_that_is_not_configurable(
    ops: list[tuple[bool, Permission, Role]], perm: Permission, role: Role
) -> None:
    grants = Grants()
    for is_grant, p, r in ops:
        grants = grants.grant(p, r) if is_grant else grants.revoke(p, r)
    p = Principal(
        user_id="u",
        email="e@example.com",
        is_operator=False,
        token_id="t",
        scope=Scope(),
        roles={ORG: role},
        grants={ORG: grants},
    )
    if perm in CONFIGURABLE or perm is Permission.WHOAMI:
        return
    allowed = perm.least_role is not None and role.at_least(perm.least_role)
    if allowed:
        p.check(perm, org_id=ORG)
    else:
        with pytest.raises(PermissionDenied):
            p.check(perm, org_id=ORG)
    with pytest.raises(ValueError):
        Grants({perm: Role.VIEWER})


def test_viewers_hold_neither_logs_nor_exec_by_default() -> None:
    for perm in (Permission.LOGS_READ, Permission.MACHINES_EXEC):
        with pytest.raises(PermissionDenied):
            principal(Role.VIEWER).check(perm, org_id=ORG)
    with pytest.raises(PermissionDenied):
        principal(Role.MEMBER).check(Permission.MACHINES_EXEC, org_id=ORG)
    principal(Role.MEMBER).check(Permission.LOGS_READ, org_id=ORG)


def test_stored_grants_fail_closed() -> None:
    grants = grants_from_rows(
        [
            (ORG, "machines:exec", "superuser"),  # not a role: no one
            (ORG, "members:write", "viewer"),  # not configurable: ignored
            (ORG, "logs:read", "none"),
        ]
    )[ORG]
    assert grants.roles(Permission.MACHINES_EXEC) == []
    assert grants.roles(Permission.LOGS_READ) == []
    assert Permission.MEMBERS_WRITE not in grants.least

"""Attenuation can only narrow: no sequence of caveats grants more than its parent."""

from __future__ import annotations

import itertools
import secrets

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hangar.auth.rbac import Action, Permission, Role
from hangar.auth.tokens import Principal, Scope, parse_caveats
from hangar.crypto.macaroons import Macaroon, mint
from hangar.errors import AuthError, NotFound, PermissionDenied

ORGS = ("org_a", "org_b")
APPS = ("web", "db")
# Instants around the stamps caveats use below, and the edges that a falsy
# test (0) or a negative number could slip past.
TIMES = (-5, 0, 1, 99, 100, 101, 10**10)
STAMPS = (-1, 0, 1, 100, 10**10)
TARGETS = list(itertools.product(list(Permission), (None, *ORGS), (None, *APPS), TIMES))

# Well formed, though at the edges: a falsy or negative stamp, tight spacing.
EDGES = ["expires = 0", "expires = -1", "not-before = 0", "expires=100", "expires =100"]
# Caveats written the way a tamperer might try to widen or confuse them: each
# must make the whole token invalid.
TRICKS = [
    "expires = \uff10",  # full-width digit zero
    "expires = \u0661\u0660\u0660",  # Arabic-Indic "100"
    "expires = 1_00",
    "expires = +100",
    "expires = 100 ",
    "expires  = 100",
    "Expires = 0",
    "expires\u200b = 0",
    "expir\u0435s = 0",  # Cyrillic e
    "apps = web\u202e",
    "apps = web, db",
    "apps = ,",
    "apps = ",
    "apps = *",
    "org = org_a\x00",
    "org = *",
    "actions = READ",
    "actions = read,admin",
    "actions = read\u200b",
    "ip = 10.0.0.1",
    "apps",
]


def _list(pool: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(pool), min_size=1, max_size=3).map(",".join)


caveats = st.one_of(
    _list((*ORGS, "org_c")).map(lambda v: f"org = {v}"),
    _list((*APPS, "api")).map(lambda v: f"apps = {v}"),
    _list(tuple(a.value for a in Action)).map(lambda v: f"actions = {v}"),
    st.sampled_from(STAMPS).map(lambda t: f"expires = {t}"),
    st.sampled_from(STAMPS).map(lambda t: f"not-before = {t}"),
    st.sampled_from(EDGES + TRICKS),
)


def _principal(scope: Scope, operator: bool, roles: dict[str, Role]) -> Principal:
    return Principal(
        user_id="usr",
        email="u@example.com",
        is_operator=operator,
        token_id="tok",
        scope=scope,
        roles=roles,
    )


def _grants(cavs: tuple[str, ...], operator: bool, roles: dict[str, Role]) -> set[tuple]:  # type: ignore[type-arg]
    """Every (permission, org, app, time) the caveats allow this user."""
    try:
        scope = parse_caveats(cavs)
    except AuthError:
        return set()
    who = _principal(scope, operator, roles)
    allowed = set()
    for perm, org, app, now in TARGETS:
        try:
            scope.check_time(now)
            who.check(perm, org_id=org, app=app)
        except (AuthError, PermissionDenied, NotFound):
            continue
        allowed.add((perm, org, app, now))
    return allowed


roles = st.dictionaries(st.sampled_from(ORGS), st.sampled_from(list(Role)), max_size=2)


@settings(max_examples=300, deadline=None)
@given(
    parent=st.lists(caveats, max_size=5),
    added=st.lists(caveats, min_size=1, max_size=5),
    operator=st.booleans(),
    roles=roles,
)
def test_no_sequence_of_caveats_grants_more_than_its_parent(
    parent: list[str], added: list[str], operator: bool, roles: dict[str, Role]
) -> None:
    child = _grants((*parent, *added), operator, roles)
    assert child <= _grants(tuple(parent), operator, roles)
    # Every caveat is checked and all must pass: the child is inside what
    # each of its caveats allows on its own.
    for caveat in (*parent, *added):
        assert child <= _grants((caveat,), operator, roles)


windows = st.one_of(
    st.sampled_from(STAMPS).map(lambda t: f"expires = {t}"),
    st.sampled_from(STAMPS).map(lambda t: f"not-before = {t}"),
)


@settings(max_examples=200, deadline=None)
@example(parent=["expires = 0"], added=["expires = 10000000000"])
@given(parent=st.lists(windows, max_size=4), added=st.lists(windows, min_size=1, max_size=4))
def test_a_token_is_valid_only_inside_every_window_it_carries(
    parent: list[str], added: list[str]
) -> None:
    scope = parse_caveats((*parent, *added))
    for now in TIMES:
        inside = all(
            now < int(c.split("=")[1]) if c.startswith("expires") else now >= int(c.split("=")[1])
            for c in (*parent, *added)
        )
        if inside:
            scope.check_time(now)
        else:
            with pytest.raises(AuthError):
                scope.check_time(now)


@settings(max_examples=100, deadline=None)
@given(parent=st.lists(caveats, max_size=4), added=st.lists(caveats, min_size=1, max_size=4))
def test_attenuated_macaroons_carry_every_caveat_to_the_policy(
    parent: list[str], added: list[str]
) -> None:
    key = secrets.token_bytes(32)
    try:
        token = mint(key, "id", tuple(parent)).attenuate(*added)
    except AuthError:
        return  # the macaroon layer refused the text outright
    verified = Macaroon.parse(token.serialize()).verify(key)
    assert verified == (*parent, *added)


@pytest.mark.parametrize("past", [-1, 0, 1, 99])
def test_a_past_expiry_is_not_undone_by_a_later_or_earlier_one(past: int) -> None:
    for order in ((past, 10**10), (10**10, past)):
        scope = parse_caveats(tuple(f"expires = {t}" for t in order))
        assert scope.expires == past
        with pytest.raises(AuthError, match="expired"):
            scope.check_time(100)


@pytest.mark.parametrize("early", [-1, 0, 1])
def test_not_before_takes_the_latest(early: int) -> None:
    for order in ((early, 10**10), (10**10, early)):
        scope = parse_caveats(tuple(f"not-before = {t}" for t in order))
        with pytest.raises(AuthError, match="not valid yet"):
            scope.check_time(100)


@pytest.mark.parametrize("trick", TRICKS)
def test_caveats_not_written_exactly_invalidate_the_token(trick: str) -> None:
    with pytest.raises(AuthError):
        parse_caveats(("actions = read", trick))


OPERATOR_ONLY = [p for p in Permission if p.least_role is None]


@pytest.mark.parametrize("perm", OPERATOR_ONLY, ids=lambda p: p.label)
@pytest.mark.parametrize(
    "narrowing",
    [
        "org = org_a",
        "apps = web",
        "actions = create",
        "actions = delete,control",
        "actions = write",
        "actions = read",
    ],
)
def test_caveats_bind_operators(perm: Permission, narrowing: str) -> None:
    operator = _principal(Scope(), True, {"org_a": Role.ADMIN})
    operator.check(perm, org_id=None)
    narrowed = _principal(parse_caveats((narrowing,)), True, {"org_a": Role.ADMIN})
    if narrowing.startswith("actions") and perm.action.value in narrowing:
        narrowed.check(perm, org_id=None)  # the action is allowed, and nothing else narrows
        return
    with pytest.raises(PermissionDenied):
        narrowed.check(perm, org_id=None)


@pytest.mark.parametrize("perm", list(Permission), ids=lambda p: p.label)
def test_actions_mean_exactly_those_actions(perm: Permission) -> None:
    for allowed in itertools.chain.from_iterable(
        itertools.combinations([a.value for a in Action], n) for n in range(1, len(Action) + 1)
    ):
        who = _principal(parse_caveats((f"actions = {','.join(allowed)}",)), True, {})
        if perm.action.value in allowed:
            continue
        with pytest.raises(PermissionDenied, match="does not allow"):
            who.check_action(perm)
        with pytest.raises(PermissionDenied, match="does not allow"):
            who.check(perm, org_id="org_a", app="web")

"""`hangar orgs set` checks its grants before it asks the server anything."""

from __future__ import annotations

import pytest

from hangar.cli.main import run


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grant", "member"], "expected ROLE=PERMISSION"),
        (["--revoke", "=logs:read"], "expected ROLE=PERMISSION"),
        (["--grant", "member="], "expected ROLE=PERMISSION"),
        ([], "nothing to change"),
    ],
)
def test_malformed_grants_are_refused_before_any_request(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # No login and no server: a request would fail differently.
    assert run(["orgs", "set", "acme", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "not logged in" not in err

"""docs/config.md is generated from hangar.toml's schema, and cannot drift from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hangar.cli import config_reference
from hangar.cli.config_reference import EFFECTS, reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_the_committed_reference_is_the_generated_one() -> None:
    assert DOC.read_text() == reference(), (
        "docs/config.md is stale: run `hangar config reference > docs/config.md`"
    )


def test_every_key_has_its_type_range_default_and_effect() -> None:
    text = reference()
    assert "| `kill_timeout` | duration" in text and '| `"5s"` |' in text
    assert "| `internal_port` | integer | ≥ 1, ≤ 65535 | `8080` |" in text
    assert "| `strategy` | one of `immediate`, `rolling`, `canary`, `bluegreen` |" in text
    assert "## `[[http_service.checks]]`" in text and "## `[checks.NAME]`" in text
    assert "| `memory` | size" in text and "≥ 64, ≤ 262144" in text


def test_a_key_without_an_effect_fails_the_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    effects = {k: v for k, v in EFFECTS.items() if k != "deploy.wait_timeout"}
    monkeypatch.setattr(config_reference, "EFFECTS", effects)
    with pytest.raises(KeyError, match=r"deploy\.wait_timeout"):
        reference()


def test_an_effect_for_a_key_that_is_gone_fails_the_generation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(config_reference, "EFFECTS", {**EFFECTS, "deploy.speed": "fast"})
    with pytest.raises(KeyError, match=r"deploy\.speed"):
        reference()

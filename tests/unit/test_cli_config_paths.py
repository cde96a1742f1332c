"""Paths in hangar.toml are the file's, not the current directory's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hangar.cli import deploy
from hangar.cli.main import run
from hangar.images.oci import build_layout, layer_tar

CONFIG = """
app = "hello"
[build]
  image = "oci:image:latest"
"""


class FakeApi:
    """Takes uploads (answering with a digest per tar) and releases."""

    def __init__(self) -> None:
        self.posted: list[dict[str, Any]] = []
        self.uploads: list[bytes] = []

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        if path.endswith("/images"):
            content = kwargs["content"]
            self.uploads.append(content if isinstance(content, bytes) else b"".join(content))
            return {"image": f"sha256:{len(self.uploads):064x}"}
        self.posted.append(kwargs["json"])
        return {"version": 1, "strategy": "rolling", "status": "pending"}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    fake = FakeApi()
    monkeypatch.setattr(deploy, "client", lambda ctx: fake)
    return fake


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An app directory whose hangar.toml names ``image`` beside it, and another directory.

    Each layout exists in one place only, so uploading from the wrong
    directory fails instead of sending something.
    """
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "hangar.toml").write_text(CONFIG)
    build_layout(tmp_path / "app" / "image", [layer_tar([])])
    (tmp_path / "elsewhere").mkdir()
    build_layout(tmp_path / "elsewhere" / "mine", [layer_tar([])], tag="v2")
    return tmp_path


def test_deploy_in_the_apps_directory_finds_its_image(
    api: FakeApi, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project / "app")
    assert run(["deploy", "--detach"]) == 0
    assert len(api.uploads) == 1 and api.posted[0]["image"] == f"sha256:{1:064x}"


def test_deploy_from_elsewhere_takes_the_image_from_the_files_directory(
    api: FakeApi, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project / "elsewhere")
    assert run(["deploy", "--config", "../app/hangar.toml", "--detach"]) == 0
    assert len(api.uploads) == 1 and api.posted[0]["image"] == f"sha256:{1:064x}"


def test_an_image_flag_is_the_callers_path(
    api: FakeApi, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project / "elsewhere")
    assert run(["deploy", "-c", "../app/hangar.toml", "-i", "oci:mine:v2", "--detach"]) == 0
    assert len(api.uploads) == 1 and api.posted[0]["image"] == f"sha256:{1:064x}"
    # The same flag from the app's directory names a layout that is not there.
    monkeypatch.chdir(project / "app")
    assert run(["deploy", "-i", "oci:mine:v2", "--detach"]) == 1
    assert len(api.uploads) == 1


def test_validating_a_missing_file_suggests_only_what_the_command_takes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(["config", "validate", "missing.toml"]) == 2
    error, hint = capsys.readouterr().err.splitlines()
    assert error == "error: cannot read missing.toml: no such file"
    assert "--config" not in hint and "hangar config validate PATH" in hint

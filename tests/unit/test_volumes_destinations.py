"""Where a mount's destination leads in an image whose symlinks name other places."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hangar.agent.volumes.manager import check_destinations, resolve_in_root
from hangar.config.appconfig import parse_app_config
from hangar.contract.assignments import Assignment
from hangar.contract.volumes import VolumeMount
from hangar.domain.volumes import check_destination
from hangar.errors import HangarError, ValidationError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    rootfs = tmp_path / "rootfs"
    (rootfs / "srv" / "app").mkdir(parents=True)
    (rootfs / "etc").mkdir()
    for name, target in (
        ("data", "/etc"),
        ("up", "../../../../../.."),
        ("rel", "srv/app"),
        ("via", "up/dev"),
        ("loop1", "loop2"),
        ("loop2", "loop1"),
        ("hop", "/srv/../run/x"),
    ):
        os.symlink(target, rootfs / name)
    os.symlink("../..", rootfs / "srv" / "app" / "back")
    return rootfs


@pytest.mark.parametrize(
    ("path", "resolved"),
    [
        ("/data", "/etc"),
        ("/data/sub", "/etc/sub"),
        ("/up", "/"),
        ("/up/dev", "/dev"),
        ("/via", "/dev"),
        ("/rel", "/srv/app"),
        ("/srv/app/back/proc", "/proc"),
        ("/hop", "/run/x"),
        ("/absent/../x", "/x"),
        ("/srv/app", "/srv/app"),
    ],
)
def test_symlinks_are_followed_inside_the_root_only(root: Path, path: str, resolved: str) -> None:
    assert resolve_in_root(root, path) == resolved


def test_a_loop_of_symlinks_is_refused(root: Path) -> None:
    with pytest.raises(ValidationError, match="loop"):
        resolve_in_root(root, "/loop1")


def _want(destination: str) -> Assignment:
    mount = VolumeMount("vol_abcdef12", "data", destination, 64, "gocryptfs")
    return Assignment("m-1", "app", 1, "started", "img", mounts=[mount])


@pytest.mark.parametrize("destination", ["/data", "/via", "/hop", "/srv/app/back/proc"])
def test_a_symlink_to_a_place_no_volume_may_go_is_refused(root: Path, destination: str) -> None:
    with pytest.raises(ValidationError, match="symlink in the image"):
        check_destinations(_want(destination), root)


def test_a_symlink_to_a_directory_of_its_own_is_taken(root: Path) -> None:
    check_destinations(_want("/rel"), root)
    check_destinations(_want("/srv/app"), root)


@pytest.mark.parametrize(
    "destination", ["//proc", "//dev", "//etc", "//run/x", "//etc/hosts", "//", "//data"]
)
def test_a_leading_double_slash_is_not_normalized(destination: str) -> None:
    """POSIX normpath keeps a leading ``//``: such a path passed every check and runc
    mounted ``//dev`` on /dev."""
    with pytest.raises(ValidationError, match="not normalized"):
        check_destination(destination)


def test_a_leading_double_slash_is_refused_in_hangar_toml() -> None:
    with pytest.raises(HangarError, match="not normalized"):
        parse_app_config('app = "a"\n[[mounts]]\nsource = "data"\ndestination = "//dev"\n')


def test_the_agent_checks_a_destination_it_is_given_again(root: Path) -> None:
    """A release stored before a rule was added still reaches the agent: it checks too."""
    with pytest.raises(ValidationError, match="not normalized"):
        check_destinations(_want("//dev"), root)

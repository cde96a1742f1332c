"""Unpacking OCI images: layer semantics, and layers that try to escape."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hangar.errors import ConfigError, IntegrityError, NotFound, ValidationError
from hangar.images.oci import ImageRef, build_layout, layer_tar, parse_image_ref, read_manifest
from hangar.images.store import ImageStore

BASE = 200000


def f(
    name: str, data: bytes = b"x", mode: int = 0o644, uid: int = 0
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode, info.uid, info.gid = mode, uid, uid
    return info, data


def d(name: str, mode: int = 0o755) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    return info


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.fixture
def searchable() -> Iterator[Path]:
    """A directory machines could traverse to (pytest's own are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="hangar-images-", dir="/var/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def store(searchable: Path) -> ImageStore:
    return ImageStore(searchable / "images", uid_base=BASE)


def test_a_store_machines_cannot_reach_is_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    with pytest.raises(ConfigError, match="not searchable by others") as info:
        ImageStore(tmp_path / "images")
    assert info.value.hint == f"chmod o+x {tmp_path}, or keep Hangar's state elsewhere"


def make(tmp_path: Path, *layers: list[object], tag: str = "latest", **config: object) -> ImageRef:
    build_layout(
        tmp_path / "layout",
        [layer_tar(layer) for layer in layers],
        tag=tag,  # type: ignore[arg-type]
        config=config,
    )
    return ImageRef("oci", path=tmp_path / "layout", tag=tag)


def test_layers_apply_in_order_with_whiteouts(tmp_path: Path, store: ImageStore) -> None:
    ref = make(
        tmp_path,
        [d("etc"), f("etc/keep", b"1"), f("etc/gone", b"2"), d("var"), f("var/old", b"3")],
        [
            f(".wh.x", b""),
            f("etc/.wh.gone", b""),
            d("var"),
            f("var/.wh..wh..opq", b""),
            f("var/new", b"4"),
            f("etc/keep", b"5"),
        ],
        Cmd=["/bin/sh"],
        Env=["A=1"],
        WorkingDir="/app",
        User="1000",
    )
    image = store.pull(ref)
    root = image.rootfs
    assert (root / "etc/keep").read_bytes() == b"5"
    assert not (root / "etc/gone").exists()
    assert sorted(p.name for p in (root / "var").iterdir()) == ["new"]
    assert image.config.cmd == ["/bin/sh"] and image.config.working_dir == "/app"
    assert image.config.user == "1000" and image.config.env == ["A=1"]


def test_ownership_is_shifted_and_setuid_dropped(tmp_path: Path, store: ImageStore) -> None:
    ref = make(tmp_path, [f("bin/tool", b"#!", mode=0o4755), f("home/u/file", uid=1000)])
    root = store.pull(ref).rootfs
    tool = (root / "bin/tool").stat()
    assert tool.st_uid == BASE and stat.S_IMODE(tool.st_mode) == 0o755
    assert (root / "home/u/file").stat().st_uid == BASE + 1000
    assert root.stat().st_uid == BASE


def test_pull_is_once_per_digest(tmp_path: Path, store: ImageStore) -> None:
    ref = make(tmp_path, [f("a")])
    first = store.pull(ref)
    (first.rootfs / "a").chmod(0o600)  # a re-unpack would reset this
    again = store.pull(ref)
    assert (
        again.rootfs == first.rootfs and stat.S_IMODE((again.rootfs / "a").stat().st_mode) == 0o600
    )
    assert [p.name for p in store.root.iterdir()] == [first.digest.replace(":", "-")]


@pytest.mark.parametrize(
    ("layer", "lands_at"),
    [
        ([f("../escape")], None),
        ([f("/abs")], None),
        ([f("a/../../escape")], None),
        ([link("hl", "/etc/passwd", tarfile.LNKTYPE)], None),
        ([link("hl", "../outside", tarfile.LNKTYPE)], None),
        # Through symlinks the write is resolved as in a chroot: it stays inside.
        ([link("ln", "/"), f("ln/etc/escape")], "etc/escape"),
        ([link("ln", "../../.."), f("ln/escape")], "escape"),
    ],
)
def test_escaping_layers_are_refused_or_contained(
    tmp_path: Path, store: ImageStore, layer: list[object], lands_at: str | None
) -> None:
    outside = tmp_path / "outside"
    outside.write_text("untouched")
    ref = make(tmp_path, layer)
    if lands_at is None:
        with pytest.raises(IntegrityError):
            store.pull(ref)
        assert list(store.root.iterdir()) == []  # nothing half-unpacked
    else:
        root = store.pull(ref).rootfs
        assert (root / lands_at).read_bytes() == b"x"
        for path in root.rglob("*"):
            assert path.is_symlink() or path.resolve().is_relative_to(root.resolve())
    assert outside.read_text() == "untouched"
    assert not (tmp_path / "escape").exists() and not (tmp_path / "layout" / "escape").exists()
    assert not Path("/escape").exists() and not Path("/etc/escape").exists()


def test_symlinks_resolve_inside_the_root(tmp_path: Path, store: ImageStore) -> None:
    ref = make(tmp_path, [d("usr"), d("usr/bin"), link("bin", "/usr/bin"), f("bin/tool", b"t")])
    root = store.pull(ref).rootfs
    assert (root / "usr/bin/tool").read_bytes() == b"t"
    assert os.readlink(root / "bin") == "/usr/bin"


def test_device_nodes_are_skipped(tmp_path: Path, store: ImageStore) -> None:
    dev = tarfile.TarInfo("dev/sda")
    dev.type, dev.devmajor, dev.devminor = tarfile.BLKTYPE, 8, 0
    root = store.pull(make(tmp_path, [dev, f("ok")])).rootfs
    assert not (root / "dev/sda").exists() and (root / "ok").exists()


def test_corrupt_blob_is_refused(tmp_path: Path, store: ImageStore) -> None:
    ref = make(tmp_path, [f("a", b"hello" * 1000)])
    manifest = read_manifest(ref)
    blob = tmp_path / "layout/blobs/sha256" / manifest.layers[0].digest.split(":")[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        store.pull(ref)
    assert list(store.root.iterdir()) == []


def test_oversized_image_is_refused(tmp_path: Path, searchable: Path) -> None:
    small = ImageStore(searchable / "images", uid_base=BASE, max_bytes=1000)
    with pytest.raises(IntegrityError, match="unpack limit"):
        small.pull(make(tmp_path, [f("big", b"x" * 5000)]))
    assert list(small.root.iterdir()) == []


def test_too_many_entries_or_too_long_an_unpack_is_refused(
    tmp_path: Path, searchable: Path
) -> None:
    few = ImageStore(searchable / "few", uid_base=BASE, max_entries=3)
    with pytest.raises(IntegrityError, match="more entries"):
        few.pull(make(tmp_path / "many", [f(f"file{i}") for i in range(10)]))
    assert list(few.root.iterdir()) == []
    hurried = ImageStore(searchable / "hurried", uid_base=BASE, unpack_seconds=-1)
    with pytest.raises(IntegrityError, match="time limit"):
        hurried.pull(make(tmp_path / "slow", [f("a")]))
    assert list(hurried.root.iterdir()) == []


def test_unknown_tag_and_missing_layout(tmp_path: Path, store: ImageStore) -> None:
    make(tmp_path, [f("a")], tag="v1")
    with pytest.raises(NotFound, match=r"no tag 'v2'.*v1"):
        store.pull(ImageRef("oci", path=tmp_path / "layout", tag="v2"))
    with pytest.raises(NotFound, match="not an OCI image layout"):
        store.pull(ImageRef("oci", path=tmp_path / "nothing"))


@pytest.mark.parametrize(
    ("text", "kind", "path", "tag"),
    [
        ("./image", "oci", "image", None),
        ("oci:/x/y:v2", "oci", "/x/y", "v2"),
        ("oci:/x/y", "oci", "/x/y", None),
        ("docker://debian:12", "docker", None, None),
    ],
)
def test_image_refs(text: str, kind: str, path: str | None, tag: str | None) -> None:
    ref = parse_image_ref(text)
    assert ref.kind == kind and ref.tag == tag
    assert (str(ref.path) if ref.path else None) == path


@pytest.mark.parametrize("text", ["", "docker://", "oci:/x:"])
def test_bad_image_refs(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_image_ref(text)

"""Volumes' pure rules: sizes, names, destinations, which volume a machine takes, where it
runs; the keys' wrapping and sealing; the bind mount a machine gets."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hangar.agent.runtimes.base import MachineSpec
from hangar.agent.runtimes.ociconfig import oci_config
from hangar.contract.volumes import HostVolume, VolumeMount
from hangar.crypto.kek import EnvKekProvider
from hangar.crypto.keyring import Keyring
from hangar.crypto.secretbox import Opener, seal
from hangar.crypto.volumekeys import (
    new_volume_key,
    open_sealed_keys,
    open_volume_key,
    seal_keys,
)
from hangar.domain.placement import Candidate, place
from hangar.domain.volumes import (
    FreeVolume,
    check_destination,
    check_volume_name,
    parse_size,
    pick_free,
)
from hangar.errors import Conflict, HangarError, IntegrityError, ValidationError


@pytest.mark.parametrize(
    ("text", "mb"),
    [
        ("1gb", 1024),
        ("10", 10240),
        ("512mb", 512),
        (" 2 GiB ", 2048),
        ("64m", 64),
        ("500g", 512000),
    ],
)
def test_sizes(text: str, mb: int) -> None:
    assert parse_size(text) == mb


@pytest.mark.parametrize(
    "text", ["0", "63mb", "501gb", "1tb", "-1gb", "1.5gb", "", "1e3", "\u0661gb"]
)
def test_bad_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_size(text)


@pytest.mark.parametrize("name", ["data", "pg_data", "a"])
def test_names(name: str) -> None:
    assert check_volume_name(name) == name


@pytest.mark.parametrize("name", ["Data", "1x", "a-b", "../x", "a" * 31, "", "d\u0430ta"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        check_volume_name(name)


@pytest.mark.parametrize("path", ["/data", "/var/lib/postgresql/data", "/srv/uploads", "/mnt"])
def test_destinations(path: str) -> None:
    assert check_destination(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "data", "/", "/data/", "/data//x", "/data/../etc", "/./data", "/proc", "/proc/1",
        "/sys/fs", "/dev/shm", "/tmp", "/run/secrets", "/etc/hosts", "/etc/resolv.conf",
        "/etc", "/usr", "/bin", "/data x", "/data\n", "/da\u202eta", "/" + "a" * 600,
    ],
)  # fmt: skip
def test_bad_destinations_are_refused(path: str) -> None:
    with pytest.raises(ValidationError):
        check_destination(path)


@given(st.text(min_size=1, max_size=64))
def test_an_accepted_destination_is_normal_and_outside_the_runtimes_trees(path: str) -> None:
    try:
        check_destination(path)
    except ValidationError:
        return
    parts = path.split("/")
    assert path.startswith("/") and "" not in parts[1:] and "." not in parts and ".." not in parts
    assert parts[1] not in ("proc", "sys", "dev", "tmp", "run")


def _vol(vid: str, name: str = "data", host: str = "h1", held: str | None = None, at: float = 0):
    return FreeVolume(vid, name, host, held, at)


def test_a_new_machine_takes_the_oldest_free_volume_of_its_name() -> None:
    volumes = [
        _vol("vol_c", at=3),
        _vol("vol_a", held="m1", at=1),
        _vol("vol_b", at=2),
        _vol("vol_d", name="logs", at=0),
    ]
    assert pick_free(volumes, "data", "web").id == "vol_b"


def test_no_free_volume_is_a_conflict_that_says_what_to_do() -> None:
    with pytest.raises(Conflict) as none:
        pick_free([], "data", "web")
    assert "has no volume named 'data'" in none.value.message
    with pytest.raises(Conflict) as held:
        pick_free([_vol("vol_a", held="m1")], "data", "web")
    assert "all held" in held.value.message
    assert held.value.hint == "create one: `hangar volumes create data --app web --size 1gb`"


@given(
    st.lists(
        st.tuples(st.sampled_from(["data", "logs"]), st.booleans(), st.integers(0, 5)),
        max_size=8,
    )
)
def test_pick_free_never_hands_out_a_held_volume(specs: list[tuple[str, bool, int]]) -> None:
    volumes = [
        _vol(f"vol_{n}", name, held="m" if held else None, at=at)
        for n, (name, held, at) in enumerate(specs)
    ]
    try:
        chosen = pick_free(volumes, "data", "web")
    except Conflict:
        assert not any(v.name == "data" and v.held_by is None for v in volumes)
        return
    assert chosen.name == "data" and chosen.held_by is None


def _hosts() -> list[Candidate]:
    return [
        Candidate("h1", 1, "local", "active", 0, machines=5),
        Candidate("h2", 2, "local", "active", 0, machines=0),
        Candidate("h3", 3, "local", "cordoned", 0),
        Candidate("h4", 4, "local", "active", 512, used_mb=512),
    ]


def test_a_machine_with_a_volume_runs_on_the_volumes_host() -> None:
    assert place(_hosts(), None, 256).id == "h2"  # the least loaded, without a volume
    assert place(_hosts(), None, 256, pinned="h1").id == "h1"
    with pytest.raises(Conflict, match="takes no machines"):
        place(_hosts(), None, 256, pinned="h3")
    with pytest.raises(Conflict, match="has not 256 MB free"):
        place(_hosts(), None, 256, pinned="h4")
    with pytest.raises(Conflict):
        place(_hosts(), None, 256, pinned="gone")


@given(st.sampled_from(["h1", "h2", "h3", "h4"]), st.integers(1, 1024))
def test_pinned_placement_is_that_host_or_nothing(pinned: str, memory: int) -> None:
    try:
        assert place(_hosts(), "local", memory, pinned=pinned).id == pinned
    except Conflict:
        host = next(h for h in _hosts() if h.id == pinned)
        assert host.state != "active" or not host.has_room(memory)


@pytest.fixture
def keyring(monkeypatch: pytest.MonkeyPatch) -> Keyring:
    monkeypatch.setenv("HANGAR_KEK_HEX", "11" * 32)
    return Keyring(EnvKekProvider("HANGAR_KEK_HEX"))


def test_a_volume_key_unwraps_only_as_its_own_volumes(keyring: Keyring) -> None:
    wrapped = new_volume_key(keyring, "vol_aaaaaaaa", "luks2")
    key = open_volume_key(keyring, "vol_aaaaaaaa", wrapped)
    assert len(key) == 64 and key not in wrapped
    assert (
        len(open_volume_key(keyring, "vol_g", new_volume_key(keyring, "vol_g", "gocryptfs"))) == 32
    )
    with pytest.raises(IntegrityError):
        open_volume_key(keyring, "vol_bbbbbbbb", wrapped)  # moved to another volume's row
    with pytest.raises(ValidationError):
        new_volume_key(keyring, "vol_x", "rot13")


def test_sealed_keys_open_only_for_their_machine_and_never_as_secrets() -> None:
    opener = Opener()
    sealed = seal_keys({"vol_a": b"\x01" * 32}, opener.public_b64(), "m1")
    assert open_sealed_keys(opener, sealed, "m1") == {"vol_a": b"\x01" * 32}
    with pytest.raises(IntegrityError):
        open_sealed_keys(opener, sealed, "m2")
    with pytest.raises(IntegrityError):
        opener.open(sealed, "m1")  # not a bundle of secrets
    secrets_bundle = seal({"vol_a": "AQ=="}, opener.public_b64(), "m1")
    with pytest.raises(IntegrityError):
        open_sealed_keys(opener, secrets_bundle, "m1")  # nor the reverse
    with pytest.raises(IntegrityError):
        open_sealed_keys(Opener(), sealed, "m1")  # another host's one-time key


def test_contract_refuses_malformed_volumes() -> None:
    assert HostVolume.from_json({"volume_id": "vol_abcdef01", "size_mb": 64}).size_mb == 64
    for bad in (
        {"volume_id": "../../etc", "size_mb": 64},
        {"volume_id": "vol_abcdef01", "size_mb": 0},
        {"volume_id": "vol_abcdef01", "size_mb": 64, "encryption": "none"},
        {"volume_id": "vol_abcdef01", "size_mb": 64, "key": "x"},
    ):
        with pytest.raises(HangarError):
            HostVolume.from_json(bad)
    with pytest.raises(ValueError):
        VolumeMount("vol_abcdef01", "data", "relative", 64)


def test_a_volume_is_bound_read_write_without_setuid_or_devices() -> None:
    spec = MachineSpec(
        id="m1",
        rootfs=Path("/images/x/rootfs"),
        args=["/app"],
        volumes={"/data": Path("/agent/bundles/.volumes/vol_a/data")},
    )
    config = oci_config(
        spec, uid_base=100000, id_range=65536, files_dir=Path("/f"), init=Path("/init")
    )
    (mount,) = [m for m in config["mounts"] if m["destination"] == "/data"]
    assert mount == {
        "destination": "/data",
        "type": "none",
        "source": "/agent/bundles/.volumes/vol_a/data",
        "options": ["bind", "rw", "nosuid", "nodev"],
    }

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hangar.agent.runtimes.base import MachineSpec
from hangar.agent.runtimes.ociconfig import CAPABILITIES, INIT_PATH, oci_config
from hangar.errors import ValidationError

FILES = Path("/run/hangar/bundles/m1/files")
INIT = Path("/usr/bin/tini-static")


def config(**kw: object) -> dict[str, object]:
    spec = MachineSpec(id="m1", rootfs=Path("/images/x/rootfs"), args=["/app"], **kw)  # type: ignore[arg-type]
    return oci_config(spec, uid_base=100000, id_range=65536, files_dir=FILES, init=INIT)


def test_hardening_defaults() -> None:
    c = config()
    linux, process = c["linux"], c["process"]
    assert c["root"] == {"path": "/images/x/rootfs", "readonly": True}
    assert process["noNewPrivileges"] is True
    assert process["capabilities"]["bounding"] == CAPABILITIES
    assert "CAP_SYS_ADMIN" not in process["capabilities"]["effective"]
    assert "CAP_NET_RAW" not in CAPABILITIES and "CAP_MKNOD" not in CAPABILITIES
    kinds = {n["type"] for n in linux["namespaces"]}
    assert kinds == {"pid", "ipc", "uts", "mount", "cgroup", "user", "network"}
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": 100000, "size": 65536}]
    assert "/proc/sys" in linux["readonlyPaths"] and "/proc/kcore" in linux["maskedPaths"]
    assert linux["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"  # tests/unit/test_seccomp.py
    mounts = {m["destination"]: m for m in c["mounts"]}
    assert "nosuid" in mounts["/tmp"]["options"] and mounts["/tmp"]["type"] == "tmpfs"
    assert mounts["/etc/hosts"]["source"] == str(FILES / "hosts")
    assert "ro" in mounts["/sys"]["options"]


def test_sys_and_cgroups_are_the_machines_own_and_read_only() -> None:
    c = config(address=ipaddress.IPv6Address("fd00::5"))
    mounts = [m for m in c["mounts"] if m["destination"].startswith("/sys")]  # type: ignore[index,union-attr,attr-defined]
    # A fresh sysfs (never a bind of the host's /sys), then the cgroup hierarchy over it.
    assert [(m["destination"], m["type"], m["source"]) for m in mounts] == [
        ("/sys", "sysfs", "sysfs"),
        ("/sys/fs/cgroup", "cgroup", "cgroup"),
    ]
    for m in mounts:
        assert {"ro", "nosuid", "nodev", "noexec"} <= set(m["options"])
        assert "bind" not in m["options"] and "rbind" not in m["options"]
    linux = c["linux"]
    # Mounted inside namespaces runc makes: sysfs shows the machine's own network,
    # cgroupfs its own cgroup as the root; neither names a host namespace path.
    spaces = {n["type"]: n for n in linux["namespaces"]}  # type: ignore[index,union-attr]
    assert spaces["network"] == {"type": "network"} and spaces["cgroup"] == {"type": "cgroup"}
    assert "/sys/fs/cgroup" in linux["readonlyPaths"]  # type: ignore[index]


@given(st.integers(32, 65536), st.integers(1, 64), st.integers(1, 100000))
def test_limits_follow_the_spec(memory: int, cpus: int, pids: int) -> None:
    r = config(memory_mb=memory, cpus=cpus, pids_limit=pids)["linux"]["resources"]
    assert r["memory"]["limit"] == memory * 1024 * 1024
    assert r["cpu"]["quota"] == cpus * r["cpu"]["period"]
    assert r["pids"]["limit"] == pids
    assert r["devices"] == [{"allow": False, "access": "rwm"}]


def test_a_private_address_adds_the_network_hook() -> None:
    assert config()["hooks"] == {}
    hook = config(address=ipaddress.IPv6Address("fd00::5"))["hooks"]["createRuntime"][0]
    assert hook["args"][1:] == ["-m", "hangar.net.hook", "fd00::5"]
    nets = [n for n in config()["linux"]["namespaces"] if n["type"] == "network"]
    assert nets == [{"type": "network"}]  # runc makes it; the hook plumbs it


def test_environment_overrides_defaults_and_names_the_host() -> None:
    env = config(env={"PATH": "/custom", "A": "1"})["process"]["env"]
    assert "PATH=/custom" in env and "A=1" in env and "HOSTNAME=m1" in env


@pytest.mark.parametrize(("kw", "message"), [({"memory_mb": 16}, "below the minimum")])
def test_bad_specs(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        config(**kw)


def test_secret_files_are_read_only_binds_from_the_bundle() -> None:
    c = config(files={"/run/secrets/db": "content-one", "/tmp/a": "content-two"})
    binds = {
        m["destination"]: m
        for m in c["mounts"]
        if m["destination"] in ("/run/secrets/db", "/tmp/a")
    }  # type: ignore[index,union-attr,attr-defined]
    assert binds["/run/secrets/db"]["source"] == str(FILES / "secret-0")
    assert binds["/tmp/a"]["source"] == str(FILES / "secret-1")
    for bind in binds.values():
        assert {"ro", "nosuid", "nodev", "noexec"} <= set(bind["options"])
    order = [m["destination"] for m in c["mounts"]]  # type: ignore[index,union-attr]
    # After the tmpfs they live on, so their mount points are made there, not in the image.
    assert order.index("/run") < order.index("/run/secrets/db")
    assert order.index("/tmp") < order.index("/tmp/a")
    assert "content-" not in str(c)  # contents are written beside it, never into the config


def test_the_init_is_pid_1_read_only_and_needs_no_image_write() -> None:
    c = config()
    process = c["process"]
    # The command follows "--": an argument like "-s" is the app's, never the init's.
    assert process["args"] == [INIT_PATH, "--", "/app"]  # type: ignore[index]
    mounts = [m for m in c["mounts"] if m["destination"] == INIT_PATH]  # type: ignore[index,union-attr,attr-defined]
    assert len(mounts) == 1
    (init,) = mounts
    assert init["source"] == str(INIT) and init["type"] == "none"
    assert {"bind", "ro", "nosuid", "nodev"} <= set(init["options"])
    # It lands on the machine's own /dev tmpfs (mounted before it), not in the image.
    order = [m["destination"] for m in c["mounts"]]  # type: ignore[index,union-attr,attr-defined]
    assert INIT_PATH.startswith("/dev/") and order.index("/dev") < order.index(INIT_PATH)
    assert c["root"]["readonly"] is True  # type: ignore[index]
    # It runs as the machine's user, as the command does.
    assert config(uid=1000, gid=1000)["process"]["user"] == {"uid": 1000, "gid": 1000}  # type: ignore[index]

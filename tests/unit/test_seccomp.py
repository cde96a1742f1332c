"""The seccomp allowlist carried by every runc machine's OCI config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hangar.agent.runtimes import seccomp
from hangar.agent.runtimes.base import MachineSpec
from hangar.agent.runtimes.ociconfig import oci_config
from hangar.errors import ValidationError

MUST_NEVER_ALLOW = [
    "io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd",
    "perf_event_open", "kexec_load", "kexec_file_load", "bpf", "add_key", "keyctl",
    "request_key", "unshare", "setns", "mount", "umount2", "pivot_root", "ptrace",
    "init_module", "finit_module", "open_by_handle_at", "fsopen", "move_mount",
]  # fmt: skip


def rendered(machine: str | None = None) -> dict[str, Any]:
    spec = MachineSpec(id="m1", rootfs=Path("/images/x/rootfs"), args=["/app"])
    config = oci_config(
        spec,
        uid_base=100000,
        id_range=65536,
        files_dir=Path("/b/m1/files"),
        init=Path("/usr/bin/tini-static"),
    )
    return config["linux"]["seccomp"] if machine is None else seccomp.profile(machine)  # type: ignore[no-any-return]


def allowed(profile: dict[str, Any]) -> set[str]:
    return {
        name
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW"
        for name in rule["names"]
    }


@pytest.mark.parametrize("machine", [None, "x86_64", "aarch64", "amd64", "arm64"])
def test_default_deny_with_eperm_and_never_the_attackers_calls(machine: str | None) -> None:
    profile = rendered(machine)
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == 1  # EPERM
    names = allowed(profile)
    assert "read" in names and "execve" in names and "futex" in names  # a real allowlist
    for name in MUST_NEVER_ALLOW:
        assert name not in names, name
    assert not names & seccomp.NEVER_ALLOWED


def test_rendered_config_carries_the_allowlist() -> None:
    assert rendered() == seccomp.profile()


def test_architectures() -> None:
    x86 = seccomp.profile("x86_64")["architectures"]
    assert x86 == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert seccomp.profile("aarch64")["architectures"] == ["SCMP_ARCH_AARCH64"]
    assert "arch_prctl" in allowed(seccomp.profile("x86_64"))
    assert "arch_prctl" not in allowed(seccomp.profile("aarch64"))


def test_an_unknown_architecture_refuses_rather_than_running_unfiltered() -> None:
    with pytest.raises(ValidationError, match="no seccomp profile"):
        seccomp.profile("riscv64")


def test_conditional_rules() -> None:
    rules = seccomp.profile("x86_64")["syscalls"]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for rule in rules:
        for name in rule["names"]:
            by_name.setdefault(name, []).append(rule)
    # clone only without namespace flags: (flags & mask) == 0.
    (clone,) = by_name["clone"]
    assert clone["args"] == [
        {"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    assert 0x10000000 & clone["args"][0]["value"]  # CLONE_NEWUSER is in the mask
    (clone3,) = by_name["clone3"]
    assert clone3["action"] == "SCMP_ACT_ERRNO" and clone3["errnoRet"] == 38
    (socket,) = by_name["socket"]
    assert socket["args"] == [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]  # no AF_VSOCK
    assert all(rule["args"][0]["op"] == "SCMP_CMP_EQ" for rule in by_name["personality"])
    # Every conditional rule allows only with its arguments checked.
    for name in ("clone", "socket", "personality"):
        assert name not in rules[0]["names"]


def test_the_allowlist_has_no_duplicates_and_no_blanks() -> None:
    assert len(seccomp.ALLOWED_SYSCALLS) == len(set(seccomp.ALLOWED_SYSCALLS))
    assert all(name and name == name.strip() for name in seccomp.ALLOWED_SYSCALLS)

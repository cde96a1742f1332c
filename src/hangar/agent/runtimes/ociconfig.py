"""A machine's OCI runtime config, as pure functions of its ``MachineSpec``.

Every machine gets: its own PID, mount, UTS, IPC, cgroup and network
namespaces; a user namespace mapping its root to an unprivileged host range; a
minimal capability set; the seccomp allowlist of ``seccomp.py`` (no mount,
ptrace, bpf, io_uring, keyctl, kexec, module loading or new namespaces);
no_new_privileges; a read-only root with tmpfs ``/tmp`` and ``/run``; a
read-only ``/sys`` of its own network namespace and, under it, only its own
cgroup, read-only; masked and read-only ``/proc`` paths; and cgroup limits
for memory, CPU and pids.

PID 1 of every machine is an init (Debian's statically linked ``tini``),
bind-mounted read-only from the host at ``INIT_PATH``, on the machine's own
``/dev`` tmpfs, so no image needs it and none is written to. It starts the
machine's command as the machine's user (it runs as that user itself),
forwards every signal it receives (the app's ``kill_signal`` among them),
reaps orphaned processes and exits with the command's status. The command is
no longer PID 1, so the kernel applies the default action of a signal it does
not handle: SIGTERM stops a program that never installed a handler.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hangar.agent.runtimes import seccomp
from hangar.agent.runtimes.base import MachineSpec
from hangar.errors import ValidationError

__all__ = [
    "CAPABILITIES",
    "INIT_PATH",
    "MIN_MEMORY_MB",
    "etc_files",
    "oci_config",
]

MIN_MEMORY_MB = 32
# Where the init appears inside a machine: on the machine's own /dev tmpfs,
# a path no image provides and no image write is needed for.
INIT_PATH = "/dev/.hangar-init"
CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
]
MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
]  # fmt: skip
READONLY_PATHS = [
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
    # On cgroup v1 runc puts a writable tmpfs under the read-only hierarchies.
    "/sys/fs/cgroup",
]  # fmt: skip


def oci_config(
    spec: MachineSpec,
    *,
    uid_base: int,
    id_range: int,
    files_dir: Path,
    init: Path,
    nofile: int = 65536,
    python: str = sys.executable,
) -> dict[str, Any]:
    """The OCI runtime config for ``spec`` (pure; see the module docstring).

    ``init`` is the host's static init binary, bound read-only at ``INIT_PATH``.
    """
    if spec.memory_mb < MIN_MEMORY_MB:
        raise ValidationError(
            f"memory {spec.memory_mb} MB is below the minimum of {MIN_MEMORY_MB} MB"
        )
    if not spec.args:
        raise ValidationError("the machine has no command: the image sets none and none was given")
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOSTNAME": spec.id,
        "HOME": "/root" if spec.uid == 0 else "/",
    }
    env.update(spec.env)
    caps = list(CAPABILITIES)
    tmpfs = f"size={spec.tmpfs_mb}m"
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount", "cgroup", "user", "network")]
    hooks: dict[str, list[dict[str, Any]]] = {}
    if spec.address is not None:
        # Plumbed from the host once runc has made the namespaces, before the
        # machine's process runs (see hangar.net.netns).
        argv = [python, "-m", "hangar.net.hook", str(spec.address)]
        hooks["createRuntime"] = [{"path": python, "args": argv, "timeout": 30}]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": spec.uid, "gid": spec.gid},
            # The init, then "--": nothing in the command is read as its option.
            "args": [INIT_PATH, "--", *spec.args],
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": spec.cwd or "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile},
                        {"type": "RLIMIT_CORE", "hard": 0, "soft": 0}],
            "noNewPrivileges": True,
            "oomScoreAdj": 500,
        },
        "root": {"path": str(spec.rootfs), "readonly": True},
        "hooks": hooks,
        "hostname": spec.id,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            # The init: read-only, and no set-id bits honoured.
            {"destination": INIT_PATH, "type": "none", "source": str(init),
             "options": ["bind", "ro", "nosuid", "nodev"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", tmpfs]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            # A fresh sysfs lists only the interfaces of the network namespace
            # it was mounted in; a bind of the host's /sys would list every
            # veth and the mesh, and carry the host's debugfs, tracefs and bpf
            # mounts. runc makes the machine's network namespace (no path: in
            # its user namespace, as sysfs requires) before it mounts; the
            # veth the createRuntime hook moves in later shows up too.
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            # Inside the machine's cgroup namespace: its own cgroup as the
            # root, no other machine's, read-only.
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777", tmpfs]},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=755", tmpfs]},
            *[
                {"destination": f"/etc/{name}", "type": "none",
                 "source": str(files_dir / name),
                 "options": ["bind", "ro", "nosuid", "nodev", "noexec"]}
                for name in ("hosts", "hostname", "resolv.conf")
            ],
            # Secrets as files: on the bundle's tmpfs, mounted under /run or /tmp.
            *[
                {"destination": guest_path, "type": "none",
                 "source": str(files_dir / f"secret-{n}"),
                 "options": ["bind", "ro", "nosuid", "nodev", "noexec"]}
                for n, guest_path in enumerate(sorted(spec.files))
            ],
            # Volumes: their plaintext, mounted on the host (dm-crypt or FUSE), bound
            # read-write; no set-id bits or device files honoured.
            *[
                {"destination": destination, "type": "none",
                 "source": str(spec.volumes[destination]),
                 "options": ["bind", "rw", "nosuid", "nodev"]}
                for destination in sorted(spec.volumes)
            ],
        ],
        "linux": {
            "uidMappings": [{"containerID": 0, "hostID": uid_base, "size": id_range}],
            "gidMappings": [{"containerID": 0, "hostID": uid_base, "size": id_range}],
            "namespaces": namespaces,
            "cgroupsPath": f"/hangar/{spec.id}",
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                "memory": {"limit": spec.memory_mb << 20},
                "cpu": {"quota": spec.cpus * 100000, "period": 100000},
                "pids": {"limit": spec.pids_limit},
            },
            "seccomp": seccomp.profile(),
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    }  # fmt: skip


def etc_files(spec: MachineSpec) -> dict[str, str]:
    """The machine's /etc/hosts, /etc/hostname and /etc/resolv.conf, by file name."""
    hosts = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"127.0.1.1\t{spec.id}",
    ]
    hosts += [f"{address}\t{name}" for name, address in spec.hosts.items()]
    resolv = "".join(f"nameserver {ns}\n" for ns in spec.nameservers) or "# no resolver\n"
    return {"hosts": "\n".join(hosts) + "\n", "hostname": spec.id + "\n", "resolv.conf": resolv}

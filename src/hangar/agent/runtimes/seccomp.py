"""The seccomp allowlist every runc machine runs under.

A system call not named here fails with ``EPERM``. The list starts from the
profile container runtimes ship by default (moby's and containerd's: an
allowlist with ``SCMP_ACT_ERRNO`` as the default action) for a process without
``CAP_SYS_ADMIN``, and is narrower in a few places, each in
``NEVER_ALLOWED``:

- ``io_uring_*``: a second system call interface that seccomp cannot see into
  and a long record of kernel privilege escalations;
- ``ptrace``, ``process_vm_*``, ``kcmp``: the default profile allows them on
  new kernels; a machine has no debugger to run;
- ``adjtimex``, ``clock_adjtime``: read-only without ``CAP_SYS_TIME``, but
  nothing in a machine needs the host clock's discipline;
- ``name_to_handle_at``, ``modify_ldt``: rarely used, and past CVEs.

What callers may rely on: ``profile()`` never allows a name in
``NEVER_ALLOWED`` (checked when this module is imported), denies by default
with ``EPERM``, lets ``clone`` make threads and processes but no namespace,
answers ``clone3`` with ``ENOSYS`` (its flags sit behind a pointer seccomp
cannot read, and C libraries then fall back to ``clone``), and refuses
``AF_VSOCK`` sockets. Names the host's libseccomp does not know are skipped by
runc, which answers such calls with ``ENOSYS``.
"""

from __future__ import annotations

import platform
from typing import Any

from hangar.errors import ValidationError

__all__ = ["ALLOWED_SYSCALLS", "ARCHITECTURES", "NEVER_ALLOWED", "profile"]

EPERM, ENOSYS = 1, 38
AF_VSOCK = 40
# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER
# | CLONE_NEWPID | CLONE_NEWNET: a clone that sets any of these is refused.
CLONE_NAMESPACE_FLAGS = 0x7E020000

# Host architecture (``platform.machine()``) -> the seccomp architectures its
# processes may call through. Calls through any other ABI are refused.
ARCHITECTURES: dict[str, list[str]] = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64"],
}
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}

ALLOWED_SYSCALLS: list[str] = [
    "accept", "accept4", "access", "alarm", "bind", "brk", "cachestat", "capget", "capset",
    "chdir", "chmod", "chown", "chown32",
    "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64",
    "clock_nanosleep", "clock_nanosleep_time64", "close", "close_range", "connect",
    "copy_file_range", "creat", "dup", "dup2", "dup3",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2",
    "execve", "execveat", "exit", "exit_group",
    "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fanotify_mark",
    "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat",
    "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork",
    "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64",
    "fsync", "ftruncate", "ftruncate64",
    "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv", "futex_wake",
    "futimesat", "getcpu", "getcwd", "getdents", "getdents64",
    "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32",
    "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp",
    "getpid", "getppid", "getpriority", "getrandom", "getresgid", "getresgid32",
    "getresuid", "getresuid32", "getrlimit", "get_robust_list", "getrusage", "getsid",
    "getsockname", "getsockopt", "get_thread_area", "gettid", "gettimeofday",
    "getuid", "getuid32", "getxattr",
    "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch",
    "io_cancel", "ioctl", "io_destroy", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup", "io_submit",
    "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self",
    "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr",
    "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64",
    "madvise", "map_shadow_stack", "membarrier", "memfd_create", "memfd_secret", "mincore",
    "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall",
    "mmap", "mmap2", "mprotect",
    "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64",
    "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap",
    "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "nanosleep", "newfstatat", "_newselect", "open", "openat", "openat2", "pause",
    "pidfd_open", "pidfd_send_signal", "pipe", "pipe2",
    "pkey_alloc", "pkey_free", "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl",
    "pread64", "preadv", "preadv2", "prlimit64", "process_mrelease",
    "pselect6", "pselect6_time64", "pwrite64", "pwritev", "pwritev2",
    "read", "readahead", "readlink", "readlinkat", "readv",
    "recv", "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages",
    "removexattr", "rename", "renameat", "renameat2", "restart_syscall", "rmdir", "rseq",
    "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn",
    "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo",
    "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getscheduler", "sched_rr_get_interval",
    "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select",
    "semctl", "semget", "semop", "semtimedop", "semtimedop_time64",
    "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto",
    "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
    "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority",
    "setregid", "setregid32", "setresgid", "setresgid32", "setresuid", "setresuid32",
    "setreuid", "setreuid32", "setrlimit", "set_robust_list", "setsid", "setsockopt",
    "set_thread_area", "set_tid_address", "setuid", "setuid32", "setxattr",
    "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd",
    "signalfd4", "sigprocmask", "sigreturn", "socketcall", "socketpair", "splice",
    "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat",
    "sync", "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time",
    "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
    "timer_gettime64", "timer_settime", "timer_settime64",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit",
    "umask", "uname", "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64",
    "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write", "writev",
]  # fmt: skip

# Allowed only on the architecture that has them.
ARCH_SYSCALLS: dict[str, list[str]] = {
    "x86_64": ["arch_prctl"],
    "aarch64": ["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2",
                "breakpoint", "cacheflush", "set_tls"],
}  # fmt: skip

# personality(2) personas a program may ask for: PER_LINUX, PER_LINUX32,
# UNAME26, PER_LINUX32|UNAME26, and the query 0xffffffff.
PERSONALITIES = [0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF]

NEVER_ALLOWED: frozenset[str] = frozenset(
    {
        # asynchronous I/O rings: a syscall interface seccomp cannot filter
        "io_uring_setup", "io_uring_enter", "io_uring_register",
        # kernel attack surface
        "bpf", "perf_event_open", "userfaultfd", "lookup_dcookie", "iopl", "ioperm",
        "modify_ldt", "add_key", "keyctl", "request_key",
        "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct",
        "init_module", "finit_module", "delete_module", "create_module", "query_module",
        "get_kernel_syms", "uselib", "nfsservctl", "quotactl", "quotactl_fd",
        "open_by_handle_at", "name_to_handle_at", "fanotify_init", "vhangup",
        "mbind", "set_mempolicy", "get_mempolicy", "set_mempolicy_home_node",
        "move_pages", "migrate_pages",
        # the host's clock, name and log
        "settimeofday", "stime", "clock_settime", "clock_settime64", "clock_adjtime",
        "clock_adjtime64", "adjtimex", "syslog", "sethostname", "setdomainname",
        # mounting and changing root
        "mount", "umount", "umount2", "pivot_root", "chroot", "fsopen", "fsmount",
        "fsconfig", "fspick", "move_mount", "open_tree", "mount_setattr",
        # other processes' memory
        "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp",
        "pidfd_getfd",
        # new namespaces (clone is allowed only without namespace flags)
        "unshare", "setns", "clone3",
    }
)  # fmt: skip


def _host_machine(machine: str | None) -> str:
    name = machine if machine is not None else platform.machine()
    return _MACHINE_ALIASES.get(name, name)


def profile(machine: str | None = None) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` section for a host of architecture ``machine``
    (default: this host's).

    Raises ``ValidationError`` for an architecture without a profile, so no
    machine starts unfiltered.
    """
    arch = _host_machine(machine)
    if arch not in ARCHITECTURES:
        raise ValidationError(
            f"no seccomp profile for architecture {arch!r}: machines cannot start on this host",
            hint=f"runc machines run on {', '.join(sorted(ARCHITECTURES))} hosts",
        )
    rules: list[dict[str, Any]] = [
        {"names": sorted({*ALLOWED_SYSCALLS, *ARCH_SYSCALLS[arch]}), "action": "SCMP_ACT_ALLOW"},
        *[
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": persona, "op": "SCMP_CMP_EQ"}],
            }
            for persona in PERSONALITIES
        ],
        {
            "names": ["socket"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE"}],
        },
        {
            # Threads and processes, never a new namespace: (flags & mask) == 0.
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [
                {
                    "index": 0,
                    "value": CLONE_NAMESPACE_FLAGS,
                    "valueTwo": 0,
                    "op": "SCMP_CMP_MASKED_EQ",
                }
            ],
        },
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
    ]
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": list(ARCHITECTURES[arch]),
        "syscalls": rules,
    }


def _check() -> None:
    """Refuse to import a list that allows what must never be allowed."""
    for arch, extra in ARCH_SYSCALLS.items():
        overlap = NEVER_ALLOWED & {*ALLOWED_SYSCALLS, *extra}
        if overlap:
            raise AssertionError(f"seccomp allowlist ({arch}) names {sorted(overlap)}")


_check()

/* Calls the system calls named on its command line and prints, for each,
 * "NAME ERRNO" (0 when the call succeeded). Built static by the integration
 * tests and run inside a machine, as an attacker's program would run there.
 *
 * The arguments are chosen so that a call the seccomp filter lets through gets
 * a different answer from the kernel (EFAULT, EBADF, EINVAL or success) than
 * the filter's EPERM, wherever the kernel allows that without privilege.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#define CLONE_NEWUSER_FLAG 0x10000000L

static long probe(const char *name) {
    if (!strcmp(name, "getpid")) return syscall(SYS_getpid);
    if (!strcmp(name, "fork")) {
        pid_t pid = fork();
        if (pid == 0) _exit(0);
        if (pid < 0) return -1;
        waitpid(pid, NULL, 0);
        return 0;
    }
    if (!strcmp(name, "socket_inet")) {
        long fd = syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
        if (fd >= 0) close((int)fd);
        return fd < 0 ? -1 : 0;
    }
    if (!strcmp(name, "socket_vsock")) {
        long fd = syscall(SYS_socket, AF_VSOCK, SOCK_STREAM, 0);
        if (fd >= 0) close((int)fd);
        return fd < 0 ? -1 : 0;
    }
    if (!strcmp(name, "io_uring_setup")) return syscall(SYS_io_uring_setup, 1, NULL);
    if (!strcmp(name, "io_uring_enter")) return syscall(SYS_io_uring_enter, -1, 0, 0, 0, NULL, 0);
    if (!strcmp(name, "io_uring_register")) return syscall(SYS_io_uring_register, -1, 0, NULL, 0);
    if (!strcmp(name, "userfaultfd")) return syscall(SYS_userfaultfd, ~0);
    if (!strcmp(name, "perf_event_open")) return syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0);
    if (!strcmp(name, "bpf")) return syscall(SYS_bpf, -1, NULL, 0);
    if (!strcmp(name, "kexec_load")) return syscall(SYS_kexec_load, 0, 0, NULL, 0);
    if (!strcmp(name, "kexec_file_load")) return syscall(SYS_kexec_file_load, -1, -1, 0, NULL, 0);
    if (!strcmp(name, "add_key")) return syscall(SYS_add_key, NULL, NULL, NULL, 0, 0);
    if (!strcmp(name, "keyctl")) return syscall(SYS_keyctl, -1, 0, 0, 0, 0);
    if (!strcmp(name, "request_key")) return syscall(SYS_request_key, NULL, NULL, NULL, 0);
    if (!strcmp(name, "setns")) return syscall(SYS_setns, -1, 0);
    if (!strcmp(name, "mount")) return syscall(SYS_mount, NULL, NULL, NULL, 0, NULL);
    if (!strcmp(name, "ptrace")) return syscall(SYS_ptrace, -1, 0, NULL, NULL);
    if (!strcmp(name, "get_mempolicy")) return syscall(SYS_get_mempolicy, NULL, NULL, 0, NULL, 0);
    if (!strcmp(name, "clone3")) return syscall(SYS_clone3, NULL, 0);
    if (!strcmp(name, "clone_newuser")) {
        /* Raw clone: a child that exits at once, in a new user namespace. */
        long pid = syscall(SYS_clone, CLONE_NEWUSER_FLAG | SIGCHLD, NULL, NULL, NULL, 0);
        if (pid == 0) _exit(0);
        if (pid > 0) waitpid((pid_t)pid, NULL, 0);
        return pid < 0 ? -1 : 0;
    }
    if (!strcmp(name, "unshare")) {
        /* In a child, so the prober itself never changes namespace. */
        pid_t pid = fork();
        if (pid == 0) _exit(syscall(SYS_unshare, CLONE_NEWUSER_FLAG) == 0 ? 0 : errno);
        int status = 0;
        waitpid(pid, &status, 0);
        errno = WEXITSTATUS(status);
        return errno ? -1 : 0;
    }
    errno = ENOENT;
    return -2;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        errno = 0;
        long rc = probe(argv[i]);
        if (rc == -2) {
            printf("%s unknown\n", argv[i]);
            continue;
        }
        printf("%s %d\n", argv[i], rc < 0 ? errno : 0);
    }
    return 0;
}

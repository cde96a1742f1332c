"""The per-machine shim: runs ``runc run`` in the foreground and outlives the agent.

Started by the runc runtime, it detaches (see ``daemonize``) and then:

- passes the container's stdout and stderr, line by line, into an NDJSON log
  (``{"ts", "stream", "line"}``), rotating it by size, so no output is lost
  while the agent restarts;
- waits for the container and writes its exit status to ``exit.json``
  atomically, which is how the agent learns a machine stopped and why.

Standard library and Hangar's standard-library-only modules (``logfiles``,
``hostcmd``), so it starts fast and stays small.
Usage: ``python -m hangar.agent.runtimes.shim RUNC_ROOT BUNDLE ID STATE_DIR``
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import selectors
import signal
import sys
from pathlib import Path

from hangar import hostcmd
from hangar.telemetry.logfiles import RotatingLog

__all__ = ["main"]

MAX_LINE = 16 << 10


def pump(proc: hostcmd.Process, log: RotatingLog) -> bytes:
    """Copy the container's output into the log until both streams close.

    Returns the last line written to stderr (the init's word, if it could not
    start the command)."""
    last = b""
    selector = selectors.DefaultSelector()
    partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}
    assert proc.stdout is not None and proc.stderr is not None
    selector.register(proc.stdout, selectors.EVENT_READ, "stdout")
    selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
    open_streams = 2
    while open_streams:
        for key, _ in selector.select():
            stream = str(key.data)
            chunk = os.read(key.fd, 65536)
            if not chunk:
                selector.unregister(key.fileobj)
                open_streams -= 1
                if partial[stream]:
                    log.write(stream, partial[stream])
                    if stream == "stderr":
                        last = partial[stream]
                    partial[stream] = b""
                continue
            data = partial[stream] + chunk
            *lines, rest = data.split(b"\n")
            for line in lines:
                log.write(stream, line)
                if stream == "stderr":
                    last = line
            while len(rest) > MAX_LINE:
                log.write(stream, rest[:MAX_LINE])
                rest = rest[MAX_LINE:]
            partial[stream] = rest
    return last[:MAX_LINE]


# What the init (tini) says, exiting 126 or 127, when it could not exec the
# command: the machine's own process never ran.
_EXEC_FAILED = re.compile(rb"^\[FATAL tini \(\d+\)\] exec .* failed: ")


def daemonize(state: Path) -> None:
    """Detach from the agent: fork, new session, pid file written before the launcher exits.

    The launcher's exit tells the agent the pid file is in place; the shim is
    then nobody's child but init's, so an agent restart cannot touch it.
    """
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        os.read(read_end, 1)  # wait until the shim has written its pid
        os._exit(0)
    os.close(read_end)
    os.setsid()
    (state / "shim.pid").write_text(str(os.getpid()))
    os.write(write_end, b"1")
    os.close(write_end)


def main(argv: list[str]) -> int:
    runc_root, bundle, machine_id, state_dir = argv
    state = Path(state_dir)
    daemonize(state)
    # The agent may be stopped or restarted; the machine must not notice.
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    log = RotatingLog(state / "output.log")
    proc = hostcmd.start(
        [
            "runc",
            "--root",
            runc_root,
            "run",
            "--bundle",
            bundle,
            "--pid-file",
            str(state / "container.pid"),
            machine_id,
        ],
        stdin=hostcmd.DEVNULL,
        stdout=hostcmd.PIPE,
        stderr=hostcmd.PIPE,
    )
    last_error = pump(proc, log)
    code = proc.wait()
    log.close()
    exec_failed = code in (126, 127) and _EXEC_FAILED.match(last_error) is not None
    result = {
        # runc writes the pid file once the machine's process exists: without
        # it, runc failed before the machine ever ran; with it, the init may
        # still have failed to run the command.
        "started": (state / "container.pid").exists() and not exec_failed,
        "exit_code": code if code >= 0 else 128 - code,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
    }
    tmp = state / "exit.json.tmp"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, state / "exit.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

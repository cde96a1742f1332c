#!/usr/bin/env python3
"""Build the example app's OCI image from Debian's busybox-static.

    python examples/hello/build.py [OUTPUT_DIR]    (default: examples/hello/image)

The image serves ./www over HTTP on port 8080 with busybox httpd, as an
unprivileged user, answers /healthz for health checks and /metrics for its own
metrics. Deploy it with
`cd examples/hello && hangar deploy` (or `hangar deploy --config examples/hello/hangar.toml`).
"""

from __future__ import annotations

import shutil
import sys
import tarfile
from pathlib import Path

from hangar.images.oci import build_layout, layer_tar

HERE = Path(__file__).resolve().parent
APPLETS = [
    *("sh", "httpd", "cat", "echo", "ls", "sleep", "id", "ps", "wget", "env", "hostname"),
    *("cp", "mkdir", "rm", "test", "timeout", "nslookup"),
]
PAGE = b"""<!doctype html>
<title>Hello from Hangar</title>
<h1>Hello from Hangar</h1>
<p>This page is served by a machine: busybox httpd in a hardened runc container.</p>
"""
METRICS = b"""# HELP hello_up Whether the example app is up.
# TYPE hello_up gauge
hello_up 1
"""


def _dir(name: str, mode: int = 0o755, uid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, mode, uid, uid
    return info


def _file(name: str, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info


def _link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def build(output: Path) -> str:
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).exists():
        raise SystemExit("busybox is not installed: apt-get install busybox-static")
    entries: list[object] = [_dir(d) for d in ("bin", "etc", "proc", "sys", "dev", "run", "www")]
    # runc gives a tmpfs the mode of the directory it covers: /tmp must be 1777.
    entries.append(_dir("tmp", 0o1777))
    entries.append((_file("bin/busybox", 0o755), Path(busybox).read_bytes()))
    entries += [_link(f"bin/{applet}", "busybox") for applet in APPLETS]
    entries.append(
        (_file("etc/passwd"), b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/www:/bin/sh\n")
    )
    entries.append((_file("etc/group"), b"root:x:0:\napp:x:1000:\n"))
    entries.append((_file("www/index.html"), PAGE))
    entries.append((_file("www/healthz"), b"ok\n"))
    # The app's own metrics, in Prometheus's text format ([metrics] in hangar.toml).
    entries.append((_file("www/metrics"), METRICS))
    if output.exists():
        shutil.rmtree(output)
    return build_layout(
        output,
        [layer_tar(entries)],  # type: ignore[arg-type]
        tag="latest",
        config={
            "Entrypoint": ["/bin/httpd", "-f", "-v", "-p", "8080", "-h", "/www"],
            "User": "1000:1000",
            "WorkingDir": "/www",
            "ExposedPorts": {"8080/tcp": {}},
            "Env": ["PATH=/bin"],
        },
    )


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "image"
    digest = build(target)
    print(f"built {target} ({digest})")

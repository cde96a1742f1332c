"""The edge benchmark's backend image: this host's HAProxy answering 200 "ok" on :8080.

The image holds /usr/sbin/haproxy, the shared libraries ``ldd`` lists for it
and a configuration that answers every request itself (``http-request
return``) with HTTP keep-alive, as an unprivileged user. It runs as a real
machine, so the edge proxies to it exactly as to any app; and it answers many
times faster than the edge proxies, so it is never what the edge measures.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from hangar.images.oci import build_layout, layer_tar

PORT = 8080
CONFIG = f"""global
    maxconn 4000
    tune.bufsize 16384
defaults
    mode http
    timeout client 60s
    timeout connect 5s
    timeout server 60s
    timeout http-keep-alive 60s
frontend backend
    bind :::{PORT} v4v6
    http-request return status 200 content-type text/plain string ok
"""


def _dir(name: str, mode: int = 0o755) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    return info


def _file(name: str, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info


def shared_libraries(binary: Path) -> list[Path]:
    """The absolute paths ``ldd`` resolves for ``binary`` (the loader included)."""
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        match = re.search(r"(/\S+) \(0x", line)
        if match:
            found.append(Path(match.group(1)))
    if not found:
        raise SystemExit(f"ldd listed no libraries for {binary}")
    return found


def build(output: Path) -> str:
    """Write the OCI layout to ``output``; returns the manifest digest."""
    haproxy = Path(shutil.which("haproxy") or "/usr/sbin/haproxy")
    if not haproxy.exists():
        raise SystemExit("haproxy is not installed: run `make deps`")
    files = [Path("/usr/sbin/haproxy"), *shared_libraries(haproxy)]
    dirs = {"etc", "proc", "sys", "dev", "run", "tmp"}
    for path in files:
        dirs.update(str(p).lstrip("/") for p in path.parents if str(p) != "/")
    entries: list[object] = [_dir(d, 0o1777 if d == "tmp" else 0o755) for d in sorted(dirs)]
    for path in files:
        # resolve(): the bytes of the file a symlink names, stored under the linked name.
        entries.append((_file(str(path).lstrip("/"), 0o755), path.resolve().read_bytes()))
    entries.append((_file("etc/haproxy.cfg"), CONFIG.encode()))
    entries.append(
        (_file("etc/passwd"), b"root:x:0:0:root:/:/nonexistent\napp:x:1000:1000:app:/:/none\n")
    )
    entries.append((_file("etc/group"), b"root:x:0:\napp:x:1000:\n"))
    if output.exists():
        shutil.rmtree(output)
    return build_layout(
        output,
        [layer_tar(entries)],  # type: ignore[arg-type]
        tag="latest",
        config={
            "Entrypoint": ["/usr/sbin/haproxy", "-db", "-f", "/etc/haproxy.cfg"],
            "User": "1000:1000",
            "WorkingDir": "/",
            "ExposedPorts": {f"{PORT}/tcp": {}},
        },
    )

"""runc's createRuntime hook: plumb a machine's network before its process starts.

runc runs ``python -m hangar.net.hook ADDRESS`` on the host with the
container's state (JSON with ``id`` and ``pid``) on standard input. A non-zero
exit makes runc refuse to start the machine.
"""

from __future__ import annotations

import ipaddress
import json
import sys

from hangar.errors import HangarError
from hangar.net.netns import attach


def main(argv: list[str]) -> int:
    state = json.load(sys.stdin)
    try:
        attach(str(state["id"]), ipaddress.IPv6Address(argv[0]), int(state["pid"]))
    except (HangarError, ValueError, KeyError, IndexError) as exc:
        print(f"hangar network hook: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

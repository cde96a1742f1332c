"""What crosses between the control plane and its agents, and nothing else.

Both sides import this package; neither imports the other. The all-in-one
server's in-process agent and an agent on another host speak exactly these
types: the in-process one receives them as objects, a remote one as JSON
over mutual TLS, validated here at the boundary.

- ``assignments``: what a host should run (``Assignment``, ``CheckSpec``)
  and what it saw (``MachineStatus``).
- ``execs``: commands run inside machines (``ExecOrder``, ``ExecResult``).
- ``names``: the .internal DNS records a host serves (``Record``).
- ``mesh``: WireGuard peers (``Peer``).
- ``reports``: a host's report (``Report``): statuses, machines' output and
  (version 2) its edge's access lines by app.
- ``volumes``: volumes a machine mounts (``VolumeMount``, in an assignment
  since version 3) and volumes that live on a host (``HostVolume``).
- ``links``: the two directions as protocols, ``ControlPlaneLink`` (what an
  agent asks of the control plane) and ``HostMachines`` (what the control
  plane asks of the machines on its own host).

``VERSION`` is the contract's version. A payload names it; a side that
receives another version refuses it with a clear error rather than guess.
"""

from __future__ import annotations

from hangar.errors import ValidationError

__all__ = ["VERSION", "check_version"]

# 2: a report carries the edge's access lines (``access``);
# 3: an assignment carries the volumes its machine mounts (``mounts``).
VERSION = 3


def check_version(received: object) -> None:
    """Raise unless ``received`` is this side's contract version."""
    if received != VERSION:
        raise ValidationError(
            f"the other side speaks contract version {received!r}; this one speaks {VERSION}",
            hint="run the same Hangar version on the control plane and its agents",
        )

"""Volume drivers by name, and the choice of one for this host.

``choose()`` picks LUKS2 where the kernel has device-mapper
(``/dev/mapper/control``) and cryptsetup is installed, gocryptfs otherwise;
an operator may name one (``--volume-backend``), and a named driver this
host cannot run is a ConfigError saying why.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Protocol, TypeVar

from hangar.agent.volumes.base import VolumeDriver, VolumeLayout
from hangar.errors import ConfigError

__all__ = ["DriverFactory", "choose", "create", "names", "register"]

_BUILTIN = {"luks2": "hangar.agent.volumes.luks", "gocryptfs": "hangar.agent.volumes.gocryptfs"}
# In order of preference.
_ORDER = ("luks2", "gocryptfs")


class DriverFactory(Protocol):
    def __call__(self, layout: VolumeLayout) -> VolumeDriver: ...

    @staticmethod
    def unavailable() -> str | None: ...


_factories: dict[str, DriverFactory] = {}
F = TypeVar("F", bound=DriverFactory)


def register(name: str) -> Callable[[F], F]:
    def decorate(factory: F) -> F:
        _factories[name] = factory
        return factory

    return decorate


def names() -> list[str]:
    return list(_ORDER)


def get(name: str) -> DriverFactory:
    if name not in _BUILTIN:
        raise ConfigError(f"unknown volume backend {name!r}; known: {', '.join(_ORDER)}")
    if name not in _factories:
        importlib.import_module(_BUILTIN[name])
    return _factories[name]


def choose(name: str = "auto") -> str:
    """The backend this host uses: ``name``, or with ``auto`` the first it can run."""
    if name != "auto":
        why = get(name).unavailable()
        if why is not None:
            raise ConfigError(f"volume backend {name} cannot run on this host: {why}")
        return name
    reasons = []
    for candidate in _ORDER:
        why = get(candidate).unavailable()
        if why is None:
            return candidate
        reasons.append(f"{candidate}: {why}")
    raise ConfigError("no volume backend can run on this host (" + "; ".join(reasons) + ")")


def create(name: str, layout: VolumeLayout) -> VolumeDriver:
    return get(name)(layout)

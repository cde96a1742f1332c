"""Machine drivers by name: ``get("runc")(state_dir, bundles_dir)`` builds one.

A driver module registers its factory with ``@register(name)``. The drivers
Hangar ships are imported on first use, so asking for one never loads the
others. A name nobody registered is a ``ConfigError`` that lists the known
ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hangar.agent.runtimes.base import Runtime, RuntimeFactory
from hangar.errors import ConfigError

__all__ = ["create", "get", "names", "register"]

# Where each shipped driver lives; importing the module registers it. A
# microVM driver adds its line here.
_BUILTIN = {"runc": "hangar.agent.runtimes.runc"}

_factories: dict[str, RuntimeFactory] = {}

F = TypeVar("F", bound=RuntimeFactory)


def register(name: str) -> Callable[[F], F]:
    """Register a driver factory (usually its class) under ``name``.

    ``F``'s bound makes mypy check that the factory builds a ``Runtime``, so a
    driver that misses a method of the protocol fails type checking where it
    registers.
    """

    def decorate(factory: F) -> F:
        known = _factories.get(name)
        if known is not None and known is not factory:
            raise ValueError(f"runtime {name!r} is registered twice")
        _factories[name] = factory
        return factory

    return decorate


def names() -> list[str]:
    """Every driver name that ``get`` accepts now."""
    return sorted({*_BUILTIN, *_factories})


def get(name: str) -> RuntimeFactory:
    """The factory registered as ``name``; ConfigError naming the known ones if none is."""
    if name not in _factories and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    try:
        return _factories[name]
    except KeyError:
        raise ConfigError(
            f"unknown runtime {name!r}; known runtimes: {', '.join(names())}"
        ) from None


def create(name: str, state_dir: Path, bundles_dir: Path) -> Runtime:
    """Build the driver ``name`` over the agent's state and bundles directories."""
    return get(name)(state_dir, bundles_dir)

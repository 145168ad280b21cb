"""Connector registry: a source or destination type is one module that registers itself here.

A connector module in ``engine/channels/`` declares a pydantic config model (unknown keys
forbidden) and a class built from it, and calls :func:`source` or :func:`destination` with
its type name. :func:`discover` imports every module of the package, so adding a connector
touches no other module.
"""

from __future__ import annotations

import builtins
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict


class ConnectorConfig(BaseModel):
    """Base of every connector's config: typos are errors, never silent defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: str


@dataclass(frozen=True)
class Connector:
    type: str
    config: builtins.type[ConnectorConfig]  # the field named ``type`` hides the builtin here
    factory: Callable[..., Any]
    doc: str


SOURCES: dict[str, Connector] = {}
DESTINATIONS: dict[str, Connector] = {}


def _register(table: dict[str, Connector], type_name: str, config: type[ConnectorConfig]):
    def wrap(cls):
        if type_name in table and table[type_name].factory is not cls:
            raise RuntimeError(f"connector type {type_name!r} registered twice")
        table[type_name] = Connector(type_name, config, cls, (cls.__doc__ or "").strip())
        return cls

    return wrap


def source(type_name: str, config: type[ConnectorConfig]):
    """Class decorator: register a source connector under ``type_name``."""
    return _register(SOURCES, type_name, config)


def destination(type_name: str, config: type[ConnectorConfig]):
    """Class decorator: register a destination connector under ``type_name``."""
    return _register(DESTINATIONS, type_name, config)


_discovered = False


def discover() -> None:
    """Import every module in ``engine.channels`` so that each registers its connectors."""
    global _discovered
    if _discovered:
        return
    import engine.channels as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")
    _discovered = True

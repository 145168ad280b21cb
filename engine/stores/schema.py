"""Which tables and columns a mapping may write, per store kind (for ``engine check``)."""

from __future__ import annotations

import importlib

MANAGED = frozenset({"id", "updated_at", "last_message_id", "last_seq", "merged_into", "merged_into_issuer"})
"""Columns the store writer maintains itself; mappings never set them."""


def columns_of(kind: str) -> dict[str, set[str]]:
    """{table: writable column names} of the store kind ``clinical`` or ``pm``."""
    spec = importlib.import_module(f"engine.stores.{kind}").SPEC
    return {
        name: {c.name for c in table.columns if c.name not in MANAGED}
        for name, table in spec.tables.items()
        if name != spec.merge_audit
    }

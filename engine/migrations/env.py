"""The one Alembic environment of every store schema (clinical, pm, messages).

``engine.stores.migrate`` configures Alembic in code and passes, through
``config.attributes``: ``schema`` (which metadata to compare with, for autogenerate),
``version_table`` (``alembic_version_<schema>``) and usually ``connection`` (an open
connection inside a transaction). Each ``engine/migrations/<schema>/env.py`` just runs this
file. The schema's metadata module is imported lazily, only for the schema being migrated.
"""

from __future__ import annotations

import importlib

from alembic import context

METADATA_MODULES = {
    "clinical": "engine.stores.clinical",
    "pm": "engine.stores.pm",
    "messages": "engine.stores.console_tables",  # message_tables.metadata with the console's tables on it
}

config = context.config
schema = config.attributes.get("schema") or config.get_main_option("engine_schema")
version_table = config.attributes.get("version_table") or f"alembic_version_{schema}"


def target_metadata():
    return importlib.import_module(METADATA_MODULES[schema]).metadata


def render_item(type_, obj, autogen_context):
    """Render the engine's own column types as plain SQLAlchemy types in migration files, so
    migrations never import application code: UTCDateTime -> DateTime(timezone=True),
    JSONText -> Text, Amount -> Numeric(18, 4)."""
    if type_ == "type":
        name = type(obj).__name__
        if name == "UTCDateTime":
            return "sa.DateTime(timezone=True)"
        if name == "JSONText":
            return "sa.Text()"
        if name == "Amount":
            return "sa.Numeric(precision=18, scale=4)"
    return False


def _configure(**kw) -> None:
    context.configure(
        target_metadata=target_metadata(),
        version_table=version_table,
        render_item=render_item,
        compare_type=True,
        **kw,
    )


def run_offline() -> None:
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    from engine.stores.db import make_engine

    engine = make_engine(config.get_main_option("sqlalchemy.url") or "", durable=schema == "messages")
    try:
        with engine.connect() as conn:
            _run_on(conn)
            conn.commit()
    finally:
        engine.dispose()


def _run_on(connection) -> None:
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()

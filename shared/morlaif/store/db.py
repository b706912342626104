"""Opening the store: engine set-up per dialect, and Alembic migrations to head."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from morlaif.errors import MorlaifError

__all__ = ["open_store", "StoreUnavailable", "make_engine", "migrate", "display_url", "MIGRATIONS"]

MIGRATIONS = Path(__file__).with_name("migrations")
_MIGRATE_LOCK = threading.Lock()  # Alembic keeps its context in module globals
_PG_MIGRATE_LOCK_KEY = 0x6D6F726C  # "morl": one migrating process at a time per database


def make_engine(url: str) -> Engine:
    """An engine for `url`. SQLite: WAL, foreign keys, a busy timeout and BEGIN IMMEDIATE, so that two
    worker processes on one machine serialise their writes instead of failing with 'database is locked'."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        # a plain file path gets its folder; a URI (`file:...?mode=ro&uri=true`) names an existing database
        if u.database and u.database != ":memory:" and not u.database.startswith("file:"):
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (creating it on an empty database)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _MIGRATE_LOCK, engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATE_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def display_url(url: str) -> str:
    """The store URL as it may be shown in messages and provenance: the password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL may hold anything; show none of it
        return "(unparsable URL)"


class StoreUnavailable(MorlaifError):
    """The label store cannot be opened: a bad URL, an unreachable server, a failed migration. The message
    names the store with its password hidden; the cause is chained."""


def open_store(url: str, *, max_attempts: int = 5):  # -> Store (import cycle kept out of the signature)
    """Open (and migrate) the store at `url`: a SQLAlchemy URL, e.g. sqlite:///var/labels.db.

    Every service and command opens the store through this one function.

    Raises:
        StoreUnavailable: the URL does not parse, the database cannot be reached or migrated.
    """
    from morlaif.store.store import Store

    try:
        engine = make_engine(url)
        migrate(engine)
    except Exception as e:  # say which store, without the password
        shown = display_url(url)
        message = f"cannot open the label store {shown}: {type(e).__name__}: {e}"
        raise StoreUnavailable(message.replace(url, shown)) from e
    return Store(engine, max_attempts=max_attempts)

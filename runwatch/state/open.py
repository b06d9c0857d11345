"""Which store a configuration's state is in, opened the way each command needs it.

Theory: `state.path` is a SQLite file (one machine, one writer guarded by a lock file);
`state.url` is PostgreSQL (several instances, each a holder of leases). The daemon's
commands (`run`, `once`) open a writer: SQLite with its writer lock, PostgreSQL migrated
and named by a holder id unique to this process. The operator's commands open a reader
(never creating, migrating or locking anything) or, for their short writes, the existing
state; both give None when there is no state yet. PostgreSQL's driver is imported only
when the state is in PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import TYPE_CHECKING, TypeAlias

from runwatch.config.settings import Config
from runwatch.state.lock import writer_lock
from runwatch.state.sqlite import SqliteStore

if TYPE_CHECKING:
    from runwatch.state.postgres import PostgresStore

AnyStore: TypeAlias = "SqliteStore | PostgresStore"


def holder_id(instance: str) -> str:
    """This process as a lease holder: the instance's name, its pid and a random token (a
    restarted daemon, or a second host given the same name, is another holder)."""
    return f"{instance}/{os.getpid()}-{secrets.token_hex(2)}"


def instance_of(holder: str) -> str:
    """The configured instance name of a holder id."""
    return holder.rpartition("/")[0] or holder


def _postgres(config: Config, *, create: bool) -> PostgresStore:
    from runwatch.state.postgres import PostgresStore

    assert config.state.url is not None
    return PostgresStore.open(
        config.state.url,
        instance=holder_id(config.ha.instance),
        lease_s=config.ha.lease,
        create=create,
    )


@contextlib.contextmanager
def open_writer(config: Config) -> Iterator[AnyStore]:
    """The state for a daemon (`run`, `once`): created or migrated as needed; StoreError
    when it cannot be used (or, for SQLite, another daemon holds the file)."""
    if config.state.url is None:
        path = config.state.sqlite_path()
        with SqliteStore.open(path) as store, writer_lock(path):
            yield store
        return
    with _postgres(config, create=True) as pg:
        yield pg


def open_reader(config: Config) -> AnyStore | None:
    """The state for a command that only looks; None when there is none yet."""
    if config.state.url is None:
        return SqliteStore.open_read_only(config.state.sqlite_path())
    return _existing_postgres(config)


def open_existing(config: Config) -> AnyStore | None:
    """The state for the operator's short writes (mutes, outbox rows); None when none."""
    if config.state.url is None:
        return SqliteStore.open_existing(config.state.sqlite_path())
    return _existing_postgres(config)


def _existing_postgres(config: Config) -> PostgresStore | None:
    store = _postgres(config, create=False)
    if store.empty:
        store.close()
        return None
    return store


def where(config: Config) -> str:
    """The state's place as the operator may read it (never a password)."""
    if config.state.url is None:
        return str(config.state.sqlite_path())
    from runwatch.state.postgres_schema import describe_url

    return describe_url(config.state.url)

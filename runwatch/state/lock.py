"""One writer per state file: a second `runwatch run` (or `once`) on it is refused.

SQLite would serialise two writers without complaint, and both daemons would then poll and
deliver: every notification twice. An advisory lock beside the database makes the second
one stop with a message instead. Readers (`runwatch runs`, `once --dry-run`) take no lock.
The kernel drops the lock when the process dies, so a crash never leaves a stale one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from runwatch.errors import StoreError


@contextlib.contextmanager
def writer_lock(db_path: Path) -> Iterator[None]:
    lock_path = db_path.with_name(db_path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(
            f"cannot create the lock file {lock_path} ({exc.strerror}); "
            "make the state directory writable for runwatch"
        ) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise StoreError(
                f"another runwatch (pid {holder}) is already using the state file {db_path}; "
                "stop it first, or give this one its own state.path"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock

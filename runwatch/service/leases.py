"""The lease keeper: which workspaces this instance polls, on a PostgreSQL state.

Theory: the keeper renews this instance's workspace leases every lease/3 on a thread of
its own, so a long poll or a busy event loop never delays a renewal. The database decides
who holds what (`state.postgres_leases`: the database's clock, fair shares); the keeper
remembers, on this host's monotonic clock, when each lease was last renewed — measured from
before the renewal was sent, so never later than the database's own now() — and `holds`
answers no from two thirds of a lease after that. A daemon that cannot renew (paused,
partitioned, database gone) therefore stops polling a workspace a third of a lease before
anyone else can take it over; and should it still try to commit, the commit's fence refuses.

Each time a lease is (re)acquired its epoch grows: the poll cycle then re-reads that
workspace's runs from the store, since another instance may have moved them on meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import structlog

from runwatch.errors import StoreError

if TYPE_CHECKING:  # (the module imports psycopg, which a SQLite daemon does not need)
    from runwatch.state.postgres_leases import LeaseTick

log = structlog.get_logger("runwatch.service.leases")


class LeaseBook(Protocol):
    instance: str

    def tick(self, workspaces: Sequence[str], lease_s: float) -> LeaseTick: ...
    def release_all(self) -> None: ...


class LeaseKeeper:
    """Keeps this instance's leases; `holds(org)` is what the poll cycle asks."""

    def __init__(
        self,
        book: LeaseBook,
        *,
        lease_s: float,
        workspaces: Sequence[str],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._book = book
        self.lease_s = lease_s
        self._workspaces = list(workspaces)
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._renewed: dict[str, float] = {}  # organization id -> monotonic time of renewal
        self._epochs: dict[str, int] = {}
        self._last_tick: float | None = None  # monotonic time of the last successful tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def instance(self) -> str:
        return self._book.instance

    # -- what the daemon asks ---------------------------------------------------------------

    def holds(self, organization_id: str) -> bool:
        """Whether this instance may poll (and commit) the workspace now."""
        with self._lock:
            renewed = self._renewed.get(organization_id)
        return renewed is not None and self._monotonic() - renewed < self.lease_s * 2 / 3

    def epoch(self, organization_id: str) -> int:
        """How many times this instance has acquired the workspace's lease."""
        with self._lock:
            return self._epochs.get(organization_id, 0)

    def held(self) -> list[str]:
        return [org for org in self._workspaces if self.holds(org)]

    def reachable(self) -> bool:
        """Whether a renewal succeeded within the last lease (else the database is lost)."""
        with self._lock:
            last = self._last_tick
        return last is not None and self._monotonic() - last < self.lease_s

    def configure(self, workspaces: Sequence[str]) -> None:
        """The workspaces of a reloaded configuration, from the next tick on."""
        with self._lock:
            self._workspaces = list(workspaces)

    # -- renewing ---------------------------------------------------------------------------

    def tick(self) -> LeaseTick | None:
        """One renewal; None when the database could not be reached (logged)."""
        started = self._monotonic()
        with self._lock:
            workspaces = list(self._workspaces)
        try:
            tick = self._book.tick(workspaces, self.lease_s)
        except StoreError as exc:
            log.warning("lease.renew_failed", instance=self.instance, error=str(exc))
            return None
        with self._lock:
            lost = set(self._renewed) - tick.held - tick.released
            self._renewed = {org: started for org in tick.held}
            for org in tick.acquired:
                self._epochs[org] = self._epochs.get(org, 0) + 1
            self._last_tick = started
        if tick.acquired:
            log.info("lease.acquired", instance=self.instance, workspaces=sorted(tick.acquired))
        if tick.released:
            log.info(
                "lease.released", instance=self.instance, workspaces=sorted(tick.released),
                live=tick.live,
            )  # fmt: skip
        if lost:
            log.warning("lease.lost", instance=self.instance, workspaces=sorted(lost))
        return tick

    def start(self) -> None:
        """The first tick now (so the first poll cycle knows its share), then a thread."""
        self.tick()
        self._thread = threading.Thread(target=self._run, name="runwatch-leases", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            self.tick()

    def stop(self, *, release: bool = True) -> None:
        """Stop renewing; with `release`, free every lease now (a clean stop: no one waits
        for them to expire)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.lease_s)
        with self._lock:
            self._renewed.clear()
        if release:
            try:
                self._book.release_all()
            except StoreError as exc:
                log.warning("lease.release_failed", instance=self.instance, error=str(exc))

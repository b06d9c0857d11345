"""What `runwatch status` adds on a PostgreSQL state: the instances, and who holds which
workspace (and channel) until when — all by the database's clock, the one the leases
expire by."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, TextIO

from runwatch.config.settings import Config
from runwatch.service.self_alerts import ALERTS_META_KEY
from runwatch.state.open import AnyStore, instance_of
from runwatch.state.sqlite import SqliteStore


def alert_states(store: AnyStore) -> list[str]:
    """The stored self-alert states: the one of a single instance, and each instance's."""
    texts = [store.get_meta(ALERTS_META_KEY)]
    if not isinstance(store, SqliteStore):
        texts += store.meta_with_prefix(ALERTS_META_KEY + "/").values()
    return [t for t in texts if t]


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def ha_report(config: Config, store: AnyStore | None) -> dict[str, Any] | None:
    """The instances and leases as plain data; None for a SQLite state (one instance)."""
    if config.state.url is None:
        return None
    if store is None or isinstance(store, SqliteStore):
        return {"instances": [], "leases": [], "channels": []}
    names = {ws.organization_id: ws.name for ws in config.workspaces}
    leases = store.leases.leases()
    held: dict[str, list[str]] = {}
    for lease in leases:
        if lease.valid:
            held.setdefault(lease.holder, []).append(names.get(lease.workspace, lease.workspace))
    return {
        "instances": [
            {
                "name": instance_of(i.name),
                "holder": i.name,
                "alive": i.alive,
                "started": _iso(i.started_at),
                "last_heartbeat": _iso(i.heartbeat_at),
                "workspaces": sorted(held.get(i.name, [])),
            }
            for i in store.leases.instances()
        ],
        "leases": [
            {
                "workspace": names.get(lease.workspace, lease.workspace),
                "organization_id": lease.workspace,
                "holder": lease.holder if lease.valid else None,
                "until": _iso(lease.expires_at) if lease.valid else None,
            }
            for lease in leases
        ],
        "channels": [
            {"channel": c, "target": t or "every URL", "holder": h, "until": _iso(until)}
            for c, t, h, until in store.outbox.claims()
        ],
    }


def print_ha(report: dict[str, Any], out: TextIO) -> None:
    instances = report["instances"]
    alive = [i for i in instances if i["alive"]]
    print(f"instances: {len(alive)} alive" + ("" if alive else " (none is running)"),
          file=out)  # fmt: skip
    for i in instances:
        state = "alive" if i["alive"] else "gone"
        holds = ", ".join(i["workspaces"]) or "no workspace"
        print(
            f"  {i['holder']}: {state}, last heartbeat {i['last_heartbeat']}; holds {holds}",
            file=out,
        )
    for lease in report["leases"]:
        who = (
            f"held by {lease['holder']} until {lease['until']}"
            if lease["holder"]
            else "not held (the next instance to renew takes it)"
        )
        print(f"  workspace {lease['workspace']}: {who}", file=out)
    for claim in report["channels"]:
        print(
            f"  channel {claim['channel']} ({claim['target']}): sent by {claim['holder']} "
            f"until {claim['until']}",
            file=out,
        )

"""What the state forgets, and when: one rule for both backends.

Settled rows go after `RETENTION_MS`: sent and muted outbox rows, runs deleted that long ago,
mutes that ended, events no outbox row points at any more, Slack message ids not touched.
Dead and uncertain rows stay (the operator may retry them), and so do their events.
"""

from __future__ import annotations

RETENTION_MS = 30 * 86_400_000

# Each statement with the number of times it takes the cutoff (epoch ms); `{p}` is the
# backend's placeholder ("?" for SQLite, "%s" for psycopg).
_PRUNE = (
    ("DELETE FROM outbox WHERE state = 'sent' AND sent_at < {p}", 1),
    # Muted rows are settled as sent ones are: never to be sent, kept as long.
    ("DELETE FROM outbox WHERE state = 'muted' AND created_at < {p}", 1),
    ("DELETE FROM runs WHERE deleted_at < {p}", 1),
    ("DELETE FROM mutes WHERE until < {p} OR removed_at < {p}", 2),
    (
        "DELETE FROM events WHERE created_at < {p} AND NOT EXISTS "
        "(SELECT 1 FROM outbox WHERE outbox.event_key = events.event_key)",
        1,
    ),
    ("DELETE FROM slack_messages WHERE updated_at < {p}", 1),
)


def prune_statements(placeholder: str, now_ms: int) -> list[tuple[str, tuple[int, ...]]]:
    """The statements that prune the state at `now_ms`, each with its parameters."""
    cutoff = now_ms - RETENTION_MS
    return [(sql.format(p=placeholder), (cutoff,) * uses) for sql, uses in _PRUNE]

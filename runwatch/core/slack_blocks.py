"""Slack messages for runs: the Block Kit layout of a run's one message and its thread replies.

Theory: a run has ONE message per Slack channel, posted at its first event and edited at
every later one, so the message is always the run's whole current story: the condition up
top (emoji, flow, condition, reason), the run's timeline (each condition with its time),
then links. An edit notifies no one, so what needs attention, a failure, an error or an
overdue notice, also goes to the message's thread as a reply, a failure broadcast to the
channel too. Every outbox row of a Slack channel holds a `SlackRow` as JSON: the top
message for this event, the optional reply, and the run's key and incarnation (its
`time_created`, so a run deleted and re-created under the same id gets a message of its own).
Built before the commit like every message, so the outbox holds exactly what is sent.

Text from the API (flow names, reasons, messages, attributes) is untrusted: in every mrkdwn
object and in the `text` fallback `&`, `<`, `>` become `&amp;`, `&lt;`, `&gt;` (Slack's
own escaping, so `<!channel>` and `<http://x|y>` show literally), the formatting marks
`* _ ~ `` ` `` that could open or close formatting are swapped for look-alikes, `@here`,
`@channel` and `@everyone` get an invisible joiner, and the objects are `verbatim` (no
auto-linking, no mention parsing). The header is `plain_text`, which Slack never parses.
Only runwatch's own links (`<url|label>`) and dates (`<!date^...>`) are markup.

Pure: no I/O, no clock; `now` is not needed (every time shown comes from the event).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from runwatch.core.context import emoji_for
from runwatch.core.model import ERROR, FAILED, REACHED, Condition, Event
from runwatch.core.timing import human_duration

SCHEMA = "runwatch.slack/1"

HEADER_MAX = 150  # Slack's limit for a header block's text
FIELD_MAX = 300  # per section field (Slack allows 2,000; a field is a fact, not an essay)
MESSAGE_MAX = 1_000  # the API's message shown in the top message
REPLY_MAX = 600  # the API's message in a thread reply
TIMELINE_MAX = 20  # conditions listed; earlier ones are counted
FALLBACK_MAX = 300  # the `text` of a message: a notification's one line
OVERDUE_EMOJI = "⏰"

_FAILURES = frozenset({FAILED, ERROR})
# Look-alikes for mrkdwn's formatting marks: ∗ (asterisk operator), ˍ (modifier low macron),
# ∼ (tilde operator), ˋ (modifier grave accent). Shown as the text meant, never formatting.
_MARKS = {"*": "\u2217", "_": "\u02cd", "~": "\u223c", "`": "\u02cb"}
_MENTION = re.compile(r"@(here|channel|everyone)\b", re.IGNORECASE)
_JOINER = "\u2060"  # WORD JOINER: invisible, and "@\u2060here" is no mention


# -- escaping ---------------------------------------------------------------------------------


def escape(text: str) -> str:
    """Slack's escaping of its control characters: `&`, `<`, `>` as HTML entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def literal(text: str) -> str:
    """`text` for a mrkdwn object or a `text` field, shown as written and pinging no one.

    A formatting mark is kept only inside a word (`snake_case`, `a*b`), where Slack never
    formats; anywhere else it could open or close bold, italics, strike or code, so it is
    swapped for its look-alike.
    """
    escaped = _MENTION.sub(lambda m: "@" + _JOINER + m.group(1), escape(text))
    out: list[str] = []
    for i, char in enumerate(escaped):
        if char in _MARKS:
            before = escaped[i - 1] if i > 0 else " "
            after = escaped[i + 1] if i + 1 < len(escaped) else " "
            if not (before.isalnum() and after.isalnum()):
                char = _MARKS[char]
        out.append(char)
    return "".join(out)


def _plain(text: str, limit: int) -> str:
    """One line of `plain_text` (never parsed by Slack), cut to `limit` characters."""
    return _cut(" ".join(text.split()), limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _link(url: str | None, label: str) -> str | None:
    """A mrkdwn link to an http(s) URL; None for anything else (a log may be a path)."""
    if not url or not url.startswith(("https://", "http://")) or any(c.isspace() for c in url):
        return None
    return f"<{escape(url).replace('|', '%7C')}|{label}>"


def _date(epoch_ms: int) -> str:
    """A time Slack shows in each reader's own time zone, with a UTC fallback."""
    try:
        moment = datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return "?"
    fallback = moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"<!date^{int(epoch_ms // 1000)}^{{date_short_pretty}} {{time_secs}}|{fallback}>"


def _iso(epoch_ms: int) -> str:
    try:
        return datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S UTC"
        )
    except (OverflowError, OSError, ValueError):
        return "?"


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text, "verbatim": True}


# -- the run's message ------------------------------------------------------------------------


def _last(event: Event) -> Condition | None:
    return event.current if event.current is not None else event.previous


def _state(event: Event) -> str:
    last = _last(event)
    if event.kind == "deleted":
        return "deleted"
    return "changed" if last is None else last.condition.lower()


def _title(event: Event) -> str:
    """What the run is and where it stands, as one line of plain words (no markup)."""
    return f"{emoji_for(event)} {event.flow_name or 'run'} {_state(event)} — {event.run_id}"


def timeline(event: Event) -> tuple[Condition, ...]:
    """The run's conditions, oldest first: its history as observed, or what the event knows."""
    if event.history:
        return event.history
    known = (event.previous, *event.skipped, event.current)
    return tuple(c for c in known if c is not None)


def _timeline_text(event: Event) -> str:
    steps = timeline(event)
    lines = ["*Timeline*"]
    if len(steps) > TIMELINE_MAX:
        lines.append(f"… {len(steps) - TIMELINE_MAX} earlier")
        steps = steps[-TIMELINE_MAX:]
    for step in steps:
        note = "" if step.status == REACHED else f" ({literal(step.status)})"
        why = f" — {literal(_plain(step.reason, FIELD_MAX))}" if step.reason else ""
        lines.append(f"{_date(step.last_transition_time)}  {literal(step.condition)}{note}{why}")
    if event.kind == "deleted":
        lines.append(f"{_date(event.detected_at)}  deleted")
    if len(lines) == 1:
        lines.append("no condition yet")
    return _cut("\n".join(lines), 2_900)


def _fields(event: Event) -> list[dict[str, Any]]:
    last = _last(event)
    facts: list[tuple[str, str]] = []
    if last is not None:
        note = "" if last.status == REACHED else f" ({last.status})"
        facts.append(("Condition", last.condition + note))
    facts.append(("Workspace", event.workspace))
    enrichment = event.enrichment
    project = (enrichment.project_name if enrichment else None) or event.training_project
    if project:
        facts.append(("Project", project))
    if last is not None and last.reason:
        facts.append(("Reason", last.reason))
    if event.kind == "overdue" and event.elapsed_s is not None and last is not None:
        facts.append(("Overdue", f"{last.condition} for {human_duration(event.elapsed_s)}"))
    elif last is not None and event.time_created > 0 and event.kind != "deleted":
        seconds = max(0, (last.last_transition_time - event.time_created) // 1000)
        facts.append(("Duration", human_duration(seconds)))
    if enrichment is not None and enrichment.epoch is not None:
        facts.append(("Epoch", str(enrichment.epoch)))
    if enrichment is not None and enrichment.metrics:
        facts.append(("Metrics", ", ".join(f"{k} {v}" for k, v in enrichment.metrics)))
    if event.attributes:
        facts.append(("Attributes", ", ".join(f"{k}={v}" for k, v in event.attributes.items())))
    return [
        _mrkdwn(f"*{label}*\n{literal(_plain(value, FIELD_MAX))}") for label, value in facts[:10]
    ]


def _links(event: Event, console_url: str) -> list[dict[str, Any]]:
    links = [_link(console_url, "Open in Datature Vi"), _link(event.log, "View log")]
    text = " · ".join(link for link in links if link)
    if event.log and not _link(event.log, ""):
        text += f"{' · ' if text else ''}log: {literal(_plain(event.log, FIELD_MAX))}"
    stamp = f"run {literal(event.run_id)} · updated {_date(event.detected_at)}"
    return [_mrkdwn(f"{text} · {stamp}" if text else stamp)]


def fallback_text(event: Event) -> str:
    """The `text` of the run's message: what a notification and a screen reader say."""
    last = _last(event)
    reason = f": {last.reason}" if last is not None and last.reason else ""
    return literal(_plain(f"{_title(event)} ({event.workspace}){reason}", FALLBACK_MAX))


def slack_payload(event: Event, *, console_url: str) -> dict[str, Any]:
    """The run's message as it should read after `event`: Block Kit blocks and their `text`."""
    header = {"type": "plain_text", "text": _plain(_title(event), HEADER_MAX)}
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": header},
        {"type": "section", "fields": _fields(event)},
    ]
    last = _last(event)
    if last is not None and last.message:
        text = f"*Message*\n{literal(_plain(last.message, MESSAGE_MAX))}"
        blocks.append({"type": "section", "text": _mrkdwn(text)})
    blocks.append({"type": "section", "text": _mrkdwn(_timeline_text(event))})
    blocks.append({"type": "context", "elements": _links(event, console_url)})
    return {"text": fallback_text(event), "blocks": blocks}


def thread_reply(event: Event) -> dict[str, Any] | None:
    """The reply `event` adds to the run's thread, or None: failures and errors (broadcast to
    the channel, since the edit above notified no one) and overdue notices."""
    last = _last(event)
    if last is None or event.kind == "deleted":
        return None
    who = f"{event.flow_name or 'run'} {event.run_id}"
    if event.kind == "overdue":
        held = "" if event.elapsed_s is None else f" for {human_duration(event.elapsed_s)}"
        again = f" (reminder {event.reminder})" if event.reminder else ""
        text = f"{OVERDUE_EMOJI} {literal(who)} has been *{literal(last.condition)}*{held}{again}"
        return {"text": text, "reply_broadcast": False}
    if last.condition not in _FAILURES:
        return None
    text = f"{emoji_for(event)} {literal(who)} *{literal(last.condition)}*"
    if last.reason:
        text += f" — {literal(_plain(last.reason, FIELD_MAX))}"
    if last.message:
        text += f": {literal(_plain(last.message, REPLY_MAX))}"
    return {"text": text, "reply_broadcast": True}


# -- the outbox row ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class SlackRow:
    """What one outbox row of a Slack channel asks for.

    `edit` False (an overdue notice, which carries no history) leaves an existing message
    as it is; its `message` is only posted when the run has none yet.
    """

    event: str  # the event's key
    run: str  # "org/run_id"
    incarnation: int  # the run's time_created: a re-created run id is another run
    edit: bool
    message: Mapping[str, Any]
    reply: Mapping[str, Any] | None = None


def slack_row(event: Event, *, console_url: str) -> str:
    """The body of a Slack channel's outbox row for `event` (JSON of a `SlackRow`)."""
    doc = {
        "schema": SCHEMA,
        "event": event.key,
        "run": f"{event.organization_id}/{event.run_id}",
        "incarnation": event.time_created,
        "edit": event.kind != "overdue",
        "message": slack_payload(event, console_url=console_url),
        "reply": thread_reply(event),
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def read_row(body: str) -> SlackRow | None:
    """The `SlackRow` a row's body holds; None for a body not written for Slack (a
    self-alert, or a row from before the channel was a Slack one)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        return None
    message, reply = doc.get("message"), doc.get("reply")
    if not isinstance(message, dict) or not isinstance(doc.get("incarnation"), int):
        return None
    return SlackRow(
        event=str(doc.get("event", "")),
        run=str(doc.get("run", "")),
        incarnation=doc["incarnation"],
        edit=bool(doc.get("edit", True)),
        message=message,
        reply=reply if isinstance(reply, dict) else None,
    )


def standalone(title: str, body: str) -> dict[str, Any]:
    """A message of its own for a row not written for Slack (runwatch's self-alerts)."""
    text = literal(_plain(title, HEADER_MAX))
    return {
        "text": text,
        "blocks": [{"type": "section", "text": _mrkdwn(f"*{text}*\n{literal(body)[:2_800]}")}],
    }


def trial_message(*, host: str, channel: str, epoch_ms: int, edited: bool) -> dict[str, Any]:
    """`runwatch notify-test`'s message, first as posted, then as edited in place."""
    state = "✅ edited in place: runwatch can update its messages" if edited else "🔔 posted"
    text = literal(f"runwatch test message from {host} for channel {channel}: {state}")
    context = f"sent {_date(epoch_ms)} ({_iso(epoch_ms)})"
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": _mrkdwn(text)},
            {"type": "context", "elements": [_mrkdwn(context)]},
        ],
    }


def shown_row(rows: Sequence[SlackRow]) -> SlackRow:
    """The row whose message a run's coalesced send shows: the latest that edits, else the
    latest (a run whose only pending rows are overdue notices)."""
    edits = [row for row in rows if row.edit]
    return edits[-1] if edits else rows[-1]

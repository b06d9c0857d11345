"""The Slack layout of a run's message and its thread replies, from plain events (pure)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from runwatch.core.model import Condition, Enrichment, Event
from runwatch.core.slack_blocks import (
    HEADER_MAX,
    TIMELINE_MAX,
    escape,
    literal,
    read_row,
    shown_row,
    slack_payload,
    slack_row,
    standalone,
    thread_reply,
)

ORG = "org-1"
T0 = 1_717_236_000_000  # 2024-06-01T10:00:00Z
CONSOLE = "https://vi.example.com/org/org-1/runs/run_ab12"
HOSTILE = "<!channel> @here *bold* _it_ ~gone~ `code` <http://evil.example|click> & more"


def cond(condition: str, at: int, *, status: str = "Reached", reason: str | None = None,
         message: str | None = None) -> Condition:  # fmt: skip
    return Condition(
        condition=condition, status=status, last_transition_time=at, reason=reason,
        message=message,
    )  # fmt: skip


PENDING = cond("Pending", T0 + 2_000)
RUNNING = cond("Running", T0 + 60_000)
FAILED = cond("Failed", T0 + 4_380_000, status="FailedReach", reason="OutOfMemory",
              message="Container exceeded its memory limit")  # fmt: skip


def event(**overrides: Any) -> Event:
    values: dict[str, Any] = {
        "kind": "transition",
        "workspace": "prod",
        "organization_id": ORG,
        "run_id": "run_ab12",
        "previous": RUNNING,
        "current": FAILED,
        "history": (PENDING, RUNNING, FAILED),
        "flow_name": "yolo-detector",
        "training_project": "traffic-signs",
        "time_created": T0,
        "detected_at": T0 + 4_400_000,
        "log": "https://logs.example.com/run_ab12",
    }
    values.update(overrides)
    return Event(**values)


def texts(payload: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Every text object of a payload as (type, text), the top-level `text` as ("text", ...)."""
    yield "text", payload["text"]

    def walk(node: Any) -> Iterator[tuple[str, str]]:
        if isinstance(node, dict):
            if node.get("type") in ("mrkdwn", "plain_text") and "text" in node:
                yield node["type"], node["text"]
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    yield from walk(payload.get("blocks", []))


def markup_of(text: str) -> list[str]:
    """The `<...>` markup in a mrkdwn text: what Slack would parse as links, mentions, dates."""
    return re.findall(r"<[^<>]*>", text)


def test_it_escapes_slacks_control_characters() -> None:
    """`&`, `<` and `>` become entities, in that order, so nothing is escaped twice."""
    assert escape("a & <b> &amp;") == "a &amp; &lt;b&gt; &amp;amp;"


def test_it_keeps_marks_inside_words_and_swaps_those_that_could_format() -> None:
    """`snake_case` and `a*b` stay as written; `*bold*`, `_it_`, `~x~` and `` `c` `` cannot
    format, and mentions get an invisible joiner."""
    assert literal("snake_case a*b x~y a`b") == "snake_case a*b x~y a`b"
    out = literal("*bold* _it_ ~x~ `c` @here @channel @Everyone")
    assert not set("*_~`") & set(out)
    assert out == (
        "\u2217bold\u2217 \u02cdit\u02cd \u223cx\u223c \u02cbc\u02cb "
        "@\u2060here @\u2060channel @\u2060Everyone"
    )


def test_it_shows_hostile_api_text_literally_everywhere_it_goes() -> None:
    """A flow name, reason, message and attribute holding mentions, links and Markdown make no
    markup in any mrkdwn object nor in the text; only runwatch's own links and dates are."""
    hostile = cond("Failed", T0 + 9_000, status="FailedReach", reason=HOSTILE, message=HOSTILE)
    ev = event(current=hostile, history=(PENDING, hostile), flow_name=HOSTILE,
               attributes={"team": HOSTILE})  # fmt: skip
    payloads = [slack_payload(ev, console_url=CONSOLE), thread_reply(ev)]
    seen = 0
    for payload in payloads:
        assert payload is not None
        for kind, text in texts(payload):
            if kind == "plain_text":
                assert "\n" not in text  # a header: one line, never parsed by Slack
                continue
            seen += text.count("&lt;!channel&gt;")
            for markup in markup_of(text):
                assert markup.startswith(("<https://", "<!date^")), markup
            assert "@here" not in text and "*bold*" not in text and "`code`" not in text
    assert seen >= 5  # header-less places: reason, message, timeline, attributes, reply...
    for node in json.loads(json.dumps(payloads[0]["blocks"])):
        for obj in [*node.get("fields", []), node.get("text") or {}]:
            if obj.get("type") == "mrkdwn":
                assert obj["verbatim"] is True  # no auto-linking, no mention parsing


def test_it_puts_the_condition_up_top_then_the_timeline_then_links() -> None:
    """Header, facts, the API's message, the timeline and the links, in that order."""
    payload = slack_payload(event(), console_url=CONSOLE)
    blocks = payload["blocks"]
    assert [b["type"] for b in blocks] == ["header", "section", "section", "section", "context"]
    assert blocks[0]["text"] == {"type": "plain_text", "text": "❌ yolo-detector failed — run_ab12"}
    fields = [f["text"] for f in blocks[1]["fields"]]
    assert fields[:4] == [
        "*Condition*\nFailed (FailedReach)",
        "*Workspace*\nprod",
        "*Project*\ntraffic-signs",
        "*Reason*\nOutOfMemory",
    ]
    assert "*Duration*\n1h 13m" in fields
    assert blocks[2]["text"]["text"] == "*Message*\nContainer exceeded its memory limit"
    timeline = blocks[3]["text"]["text"].splitlines()
    assert timeline[0] == "*Timeline*"
    assert [line.split("  ", 1)[1] for line in timeline[1:]] == [
        "Pending",
        "Running",
        "Failed (FailedReach) — OutOfMemory",
    ]
    assert timeline[1].startswith(f"<!date^{(T0 + 2_000) // 1000}^")
    context = blocks[4]["elements"][0]["text"]
    assert context.startswith(
        f"<{CONSOLE}|Open in Datature Vi> · <https://logs.example.com/run_ab12|View log> · "
    )
    assert payload["text"] == "❌ yolo-detector failed — run_ab12 (prod): OutOfMemory"


def test_it_builds_the_timeline_from_what_the_event_knows_without_history() -> None:
    """An event observed without history lists its previous, skipped and current conditions."""
    ev = event(history=(), previous=PENDING, skipped=(RUNNING,))
    timeline = slack_payload(ev, console_url=CONSOLE)["blocks"][3]["text"]["text"]
    assert [line.split("  ", 1)[1] for line in timeline.splitlines()[1:]] == [
        "Pending",
        "Running",
        "Failed (FailedReach) — OutOfMemory",
    ]


def test_it_counts_the_conditions_past_the_timelines_length() -> None:
    """A run that went back and forth for ages lists its latest conditions and counts the rest."""
    history = tuple(cond("Running" if i % 2 else "Pending", T0 + i * 1000) for i in range(45))
    text = slack_payload(event(history=history), console_url=CONSOLE)["blocks"][3]["text"]["text"]
    lines = text.splitlines()
    assert lines[1] == f"… {45 - TIMELINE_MAX} earlier"
    assert len(lines) == 2 + TIMELINE_MAX


def test_it_marks_a_deleted_run_and_keeps_a_non_url_log_unlinked() -> None:
    """A deleted run says so up top and at the end of its timeline; a log path is no link."""
    ev = event(kind="deleted", previous=RUNNING, current=None, history=(), log="/var/log/x|y")
    blocks = slack_payload(ev, console_url=CONSOLE)["blocks"]
    assert blocks[0]["text"]["text"] == "🗑️ yolo-detector deleted — run_ab12"
    assert blocks[-2]["text"]["text"].splitlines()[-1].endswith("  deleted")
    context = blocks[-1]["elements"][0]["text"]
    assert "View log" not in context and "log: /var/log/x|y" in context
    assert thread_reply(ev) is None


def test_it_cuts_the_header_to_slacks_limit() -> None:
    """A flow name of 500 characters still makes a header Slack accepts."""
    header = slack_payload(event(flow_name="f" * 500), console_url=CONSOLE)["blocks"][0]
    assert len(header["text"]["text"]) == HEADER_MAX and header["text"]["text"].endswith("…")


def test_it_shows_what_was_fetched_about_a_run() -> None:
    """The project's name, the epoch and the metrics of the latest model output are facts."""
    succeeded = cond("Succeeded", T0 + 7_200_000)
    ev = event(current=succeeded, history=(PENDING, RUNNING, succeeded),
               enrichment=Enrichment(project_name="Traffic Signs", epoch=40,
                                     metrics=(("mAP", 0.81), ("recall", 0.7))))  # fmt: skip
    fields = [f["text"] for f in slack_payload(ev, console_url=CONSOLE)["blocks"][1]["fields"]]
    assert "*Project*\nTraffic Signs" in fields
    assert "*Epoch*\n40" in fields and "*Metrics*\nmAP 0.81, recall 0.7" in fields


def test_it_broadcasts_a_reply_for_failures_and_errors_only() -> None:
    """Failed and Error reply to the thread and to the channel; Running and Succeeded do not."""
    reply = thread_reply(event())
    assert reply == {
        "text": "❌ yolo-detector run_ab12 *Failed* — OutOfMemory: "
        "Container exceeded its memory limit",
        "reply_broadcast": True,
    }
    errored = thread_reply(event(current=cond("Error", T0 + 9_000)))
    assert errored is not None and errored["reply_broadcast"] is True
    assert thread_reply(event(current=RUNNING)) is None
    assert thread_reply(event(current=cond("Succeeded", T0 + 9_000))) is None


def test_it_replies_to_an_overdue_notice_without_broadcasting_or_editing() -> None:
    """An overdue notice goes to the thread only, and leaves an existing message as it is."""
    ev = event(kind="overdue", previous=PENDING, current=PENDING, history=(), rule="stuck",
               elapsed_s=7_500, reminder=2)  # fmt: skip
    assert thread_reply(ev) == {
        "text": "⏰ yolo-detector run_ab12 has been *Pending* for 2h 5m (reminder 2)",
        "reply_broadcast": False,
    }
    row = read_row(slack_row(ev, console_url=CONSOLE))
    assert row is not None and row.edit is False
    fields = [f["text"] for f in row.message["blocks"][1]["fields"]]
    assert "*Overdue*\nPending for 2h 5m" in fields


def test_it_reads_back_the_row_it_wrote() -> None:
    """A row's body names the event, the run and its incarnation, and carries both payloads."""
    ev = event()
    row = read_row(slack_row(ev, console_url=CONSOLE))
    assert row is not None
    assert (row.event, row.run, row.incarnation, row.edit) == (ev.key, "org-1/run_ab12", T0, True)
    assert row.message == slack_payload(ev, console_url=CONSOLE)
    assert row.reply == thread_reply(ev)


def test_it_reads_no_row_from_a_body_not_written_for_slack() -> None:
    """A self-alert's text, other JSON and a row of another schema are not Slack rows."""
    for body in ("Run **x** failed", "[1, 2]", '{"schema": "runwatch.event/1"}', "{"):
        assert read_row(body) is None


def test_it_shows_the_latest_row_that_edits() -> None:
    """Of a run's pending rows the latest that edits is shown; only overdue ones: the latest."""
    rows = [read_row(slack_row(e, console_url=CONSOLE)) for e in (
        event(current=RUNNING),
        event(),
        event(kind="overdue", current=FAILED, rule="r", elapsed_s=5),
    )]  # fmt: skip
    assert all(rows)
    assert shown_row([r for r in rows if r]) is rows[1]
    assert shown_row([r for r in rows[2:] if r]) is rows[2]


def test_it_makes_a_self_alert_a_message_of_its_own() -> None:
    """A row not written for Slack is posted as its title in bold over its body, escaped."""
    message = standalone("🚨 runwatch: channel ops is failing", "HTTP 500 <!here>")
    assert message["text"] == "🚨 runwatch: channel ops is failing"
    assert message["blocks"][0]["text"]["text"] == (
        "*🚨 runwatch: channel ops is failing*\nHTTP 500 &lt;!here&gt;"
    )

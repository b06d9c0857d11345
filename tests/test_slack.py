"""The native Slack channel end to end: the daemon, the simulator, and a local fake of Slack's
Web API (tests/fake_slack.py) over real HTTP.

The in-process tests drive `Daemon.poll_cycle` and `Daemon.deliver_once` with a FakeClock (the
sender's pacing and Slack's Retry-After pass without waiting); the crash test runs
`runwatch run` itself and kills it with SIGKILL while Slack holds its answer to a post.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_slack import CHANNEL_ID, TOKEN, FakeSlack, Message, iter_texts
from harness import DaemonProcess, FakeClock, daemon_on, run_cli, write_config
from receiver import Receiver
from structlog.testing import capture_logs

from runwatch.config.loading import load_config
from runwatch.config.settings import SlackConfig
from runwatch.core.model import Condition, Event
from runwatch.core.slack_blocks import slack_row
from runwatch.delivery.senders import Outgoing
from runwatch.delivery.slack import POST, UPDATE, MemoryBook, SlackSender
from runwatch.service.daemon import Daemon
from runwatch.simulator.server import Simulator

OTHER_ID = "C0OTHER0001"


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack(channels={CHANNEL_ID: "ml-runs", OTHER_ID: "ops"}) as fake:
        yield fake


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(runs=12, active=2, seed=21) as s:
        yield s


def slack_channel(fake: FakeSlack, channel: str = "#ml-runs", **extra: Any) -> dict[str, Any]:
    return {"slack": {"token": TOKEN, "channel": channel, "api_url": fake.api_url, **extra}}


def config(tmp_path: Path, sim: Simulator, fake: FakeSlack, **sections: Any) -> Path:
    channels = sections.pop("channels", None) or {"ml": slack_channel(fake)}
    return write_config(tmp_path, sim, channels=channels, **sections)


async def cycle(daemon: Daemon, clock: FakeClock, seconds: float = 30.0) -> int:
    """Let `seconds` pass, poll once, run one delivery pass; the number of rows delivered."""
    clock.advance(seconds)
    await daemon.poll_cycle()
    return await daemon.deliver_once()


def header(message: Message) -> str:
    return str(message.blocks[0]["text"]["text"])


def timeline(message: Message) -> list[str]:
    """The conditions the message's timeline lists, oldest first."""
    [block] = [b for b in message.blocks if b.get("text", {}).get("text", "").startswith("*Timel")]
    return [line.split("  ", 1)[1].split(" ")[0] for line in block["text"]["text"].splitlines()[1:]]


def the_message_of(fake: FakeSlack, run_id: str) -> Message:
    [message] = [m for m in fake.top_level() if run_id in header(m)]
    return message


async def test_it_posts_one_message_per_run_and_edits_it_at_each_transition(
    tmp_path: Path, sim: Simulator, slack: FakeSlack
) -> None:
    """A new run's first event posts its message; each of its N transitions edits it once."""
    clock = FakeClock()
    with daemon_on(config(tmp_path, sim, slack), clock) as daemon:
        await daemon.poll_cycle()  # the baseline: nothing to say
        run_id = sim.create_run(condition="Pending", flow="yolo-detector")
        assert await cycle(daemon, clock) == 1
        for condition in ("Running", "Succeeded"):
            sim.append_condition(run_id, condition)
            assert await cycle(daemon, clock) == 1
        assert await cycle(daemon, clock) == 0
        await daemon.aclose()

    [message] = slack.top_level()
    assert message.channel == CHANNEL_ID and message.edits == 2
    assert [c.method for c in slack.calls] == [POST, UPDATE, UPDATE]
    assert header(message) == f"✅ yolo-detector succeeded — {run_id}"
    assert timeline(message) == ["Pending", "Running", "Succeeded"]
    assert "succeeded" in message.text
    # Posted to "#ml-runs"; edited by the id Slack answered, as chat.update requires.
    assert slack.calls[0].args["channel"] == "#ml-runs"
    assert {c.args["channel"] for c in slack.calls[1:]} == {CHANNEL_ID}
    assert all(c.headers["authorization"] == f"Bearer {TOKEN}" for c in slack.calls)
    assert all(c.args["parse"] == "none" for c in slack.calls)  # "@here" stays text


async def test_it_edits_once_for_three_pending_changes_and_replies_to_the_failure(
    tmp_path: Path, sim: Simulator, slack: FakeSlack
) -> None:
    """Changes that piled up while Slack was out of reach go as one edit showing the latest
    state, and the failure among them gets its thread reply, broadcast to the channel."""
    clock = FakeClock()
    with daemon_on(config(tmp_path, sim, slack), clock) as daemon:
        await daemon.poll_cycle()
        run_id = sim.create_run(condition="Pending", flow="rtdetr")
        assert await cycle(daemon, clock) == 1
        sim.append_condition(run_id, "Running")
        clock.advance(30)
        await daemon.poll_cycle()
        sim.append_condition(run_id, "Failed", status="FailedReach", reason="OutOfMemory",
                             message="CUDA out of memory")  # fmt: skip
        clock.advance(30)
        await daemon.poll_cycle()
        sim.append_condition(run_id, "Running")  # a retry by the platform
        clock.advance(30)
        await daemon.poll_cycle()
        assert await daemon.deliver_once() == 3
        await daemon.aclose()

    [message] = slack.top_level()
    assert [c.method for c in slack.calls] == [POST, UPDATE, POST]
    assert message.edits == 1 and timeline(message) == ["Pending", "Running", "Failed", "Running"]
    [reply] = slack.replies(message.ts)
    assert reply.reply_broadcast is True
    assert "*Failed* — OutOfMemory: CUDA out of memory" in reply.text
    assert slack.calls[-1].args["thread_ts"] == message.ts


async def test_it_does_not_broadcast_a_failure_its_fresh_message_already_shows(
    tmp_path: Path, sim: Simulator, slack: FakeSlack
) -> None:
    """A run first seen failed posts its message, and a reply for the thread kept to it."""
    clock = FakeClock()
    with daemon_on(config(tmp_path, sim, slack), clock) as daemon:
        await daemon.poll_cycle()
        run_id = sim.create_run(condition="Failed", reason="DatasetEmpty")
        assert await cycle(daemon, clock) == 1
        await daemon.aclose()
    message = the_message_of(slack, run_id)
    [reply] = slack.replies(message.ts)
    assert reply.reply_broadcast is False and "DatasetEmpty" in reply.text


async def test_it_keeps_failures_out_of_the_thread_when_threads_are_off(
    tmp_path: Path, sim: Simulator, slack: FakeSlack
) -> None:
    """With `thread: false` a failure edits the message and posts nothing more."""
    clock = FakeClock()
    channels = {"ml": slack_channel(slack, thread=False)}
    with daemon_on(config(tmp_path, sim, slack, channels=channels), clock) as daemon:
        await daemon.poll_cycle()
        run_id = sim.create_run(condition="Running")
        await cycle(daemon, clock)
        sim.append_condition(run_id, "Error", reason="NodeLost")
        assert await cycle(daemon, clock) == 1
        await daemon.aclose()
    assert [c.method for c in slack.calls] == [POST, UPDATE]
    assert header(slack.top_level()[0]).startswith("🔥 ")


async def test_it_edits_the_message_it_posted_before_a_restart(
    tmp_path: Path, sim: Simulator, slack: FakeSlack
) -> None:
    """A new daemon on the same state file edits the run's message; never a second one."""
    cfg = config(tmp_path, sim, slack)
    clock = FakeClock()
    with daemon_on(cfg, clock) as daemon:
        await daemon.poll_cycle()
        run_id = sim.create_run(condition="Pending")
        assert await cycle(daemon, clock) == 1
        await daemon.aclose()
    sim.append_condition(run_id, "Running")
    with daemon_on(cfg, clock) as daemon:
        assert await cycle(daemon, clock) == 1
        await daemon.aclose()
    [message] = slack.top_level()
    assert message.edits == 1 and timeline(message) == ["Pending", "Running"]
    assert slack.calls[-1].method == UPDATE and slack.calls[-1].args["ts"] == message.ts


async def test_it_starts_a_new_message_for_a_run_id_created_anew(
    tmp_path: Path, sim: Simulator, slack: FakeSlack
) -> None:
    """A run deleted and created again under the same id (another time_created) is another
    run: its first event posts a message of its own."""
    clock = FakeClock()
    rules = [{"name": "all", "match": {"event": ["new", "transition", "deleted"]},
              "notify": ["ml"]}]  # fmt: skip
    cfg = config(tmp_path, sim, slack, rules=rules, poll={"full_resync": "0s"})
    with daemon_on(cfg, clock) as daemon:
        await daemon.poll_cycle()
        run_id = sim.create_run(condition="Running")
        assert await cycle(daemon, clock) == 1
        sim.delete_run(run_id)
        assert await cycle(daemon, clock) == 1  # the deletion edits the first message
        sim.create_run(condition="Pending", run_id=run_id)
        sim.set_time_created(run_id, sim.now_ms() + 5_000)
        assert await cycle(daemon, clock) == 1
        await daemon.aclose()
    first, second = slack.top_level()
    assert header(first).startswith("🗑️ ") and header(first).endswith(f"deleted — {run_id}")
    assert first.edits == 1 and second.edits == 0 and run_id in header(second)


async def test_it_waits_out_a_429_for_that_method_only(
    tmp_path: Path, sim: Simulator, slack: FakeSlack
) -> None:
    """After a 429 on chat.update a channel sends no edit before its Retry-After, while its
    posts of new runs and another channel's edits go on."""
    clock = FakeClock()
    channels = {"ml": slack_channel(slack), "ops": slack_channel(slack, "#ops")}
    with daemon_on(config(tmp_path, sim, slack, channels=channels), clock) as daemon:
        await daemon.poll_cycle()
        a, b = sim.create_run(condition="Pending"), sim.create_run(condition="Pending")
        assert await cycle(daemon, clock) == 4  # two posts in each channel
        sim.append_condition(a, "Running")
        sim.append_condition(b, "Running")
        sim.create_run(condition="Pending")  # a new run: its post is not held back
        slack.fail(UPDATE, status=429, retry_after=30, channel=CHANNEL_ID)
        before = len(slack.calls)
        assert await cycle(daemon, clock) == 4  # c in both; a and b edited in ops only
        in_ml = [(x.method, x.status) for x in slack.calls[before:] if x.args["channel"]
                 in (CHANNEL_ID, "#ml-runs")]  # fmt: skip
        assert sorted(in_ml) == [(POST, 200), (UPDATE, 429)]  # the 2nd edit: not even tried
        in_ops = [x.method for x in slack.calls[before:] if x.args["channel"] == OTHER_ID]
        assert sorted(in_ops) == [POST, UPDATE, UPDATE]
        clock.advance(25)
        before = len(slack.calls)
        assert await daemon.deliver_once() == 0
        assert slack.calls[before:] == []
        clock.advance(6)  # 31 s after the 429
        assert await daemon.deliver_once() == 2  # both of ml's edits, at last
        await daemon.aclose()
    edited = [m for m in slack.top_level() if m.channel == CHANNEL_ID and m.edits]
    assert len(edited) == 2 and all(timeline(m) == ["Pending", "Running"] for m in edited)


async def test_it_posts_a_fresh_message_when_someone_deleted_the_old_one(
    tmp_path: Path, sim: Simulator, slack: FakeSlack
) -> None:
    """An edit answered `message_not_found` posts the run's message anew and later edits go
    to the new one."""
    clock = FakeClock()
    with daemon_on(config(tmp_path, sim, slack), clock) as daemon:
        await daemon.poll_cycle()
        run_id = sim.create_run(condition="Pending")
        assert await cycle(daemon, clock) == 1
        [gone] = slack.top_level()
        slack.delete(gone.ts)
        sim.append_condition(run_id, "Running")
        assert await cycle(daemon, clock) == 1
        sim.append_condition(run_id, "Succeeded")
        assert await cycle(daemon, clock) == 1
        await daemon.aclose()
    [message] = slack.top_level()
    assert [c.method for c in slack.calls] == [POST, UPDATE, POST, UPDATE]
    assert slack.calls[1].answer == {"ok": False, "error": "message_not_found"}
    assert slack.calls[-1].args["ts"] == message.ts != gone.ts
    assert timeline(message) == ["Pending", "Running", "Succeeded"]


async def test_it_gives_up_at_once_on_invalid_auth_and_alerts_another_channel(
    tmp_path: Path, sim: Simulator, slack: FakeSlack, receiver: Receiver
) -> None:
    """A token Slack refuses makes the row dead at once, logged with the error name and
    counted dead; the channel turns failing and the self-alert goes to the admin channel."""
    wrong = "xoxb-9999999999-8888888888-notTHEtokenATall"
    channels = {
        "ml": {"slack": {"token": wrong, "channel": "#ml-runs", "api_url": slack.api_url}},
        "admin": receiver.apprise_url("/admin"),
    }
    rules = [{"name": "all", "match": {}, "notify": ["ml"]}]
    alerts = {"notify": ["admin"], "channel_failing_after": "2m"}
    cfg = config(tmp_path, sim, slack, channels=channels, rules=rules, alerts=alerts)
    clock = FakeClock()
    with capture_logs() as logs, daemon_on(cfg, clock) as daemon:
        await daemon.poll_cycle()
        sim.create_run(condition="Pending")
        assert await cycle(daemon, clock) == 0
        assert "ml" in daemon.deliverer.failing_channels()
        for _ in range(5):
            await cycle(daemon, clock)
        dead = daemon.metrics.registry.get_sample_value(
            "runwatch_notifications_total", {"channel": "ml", "result": "dead"}
        )
        stats = daemon.store.outbox_stats(daemon.now_ms())
        await daemon.aclose()
    assert len(slack.calls) == 1 and slack.calls[0].answer["error"] == "invalid_auth"
    assert dead == 1.0 and stats.dead_by_channel == {"ml": 1} and stats.pending == 0
    [logged] = [e for e in logs if e["event"] == "delivery.dead"]
    assert "chat.postMessage answered invalid_auth; check the bot token" in logged["error"]
    [alert] = receiver.wait_for(1, path="/admin")
    assert "channel ml is failing" in alert["title"]
    assert wrong not in json.dumps(logs, default=str) and wrong not in alert["message"]


async def test_it_posts_self_alerts_to_a_slack_channel_as_messages_of_their_own(
    tmp_path: Path, sim: Simulator, slack: FakeSlack, receiver: Receiver
) -> None:
    """A Slack admin channel gets each self-alert as a message with its title, not as a run."""
    channels = {"hook": receiver.apprise_url("/hook"), "ops": slack_channel(slack, "#ops")}
    rules = [{"name": "all", "match": {}, "notify": ["hook"]}]
    alerts = {"notify": ["ops"], "channel_failing_after": "1m"}
    cfg = config(tmp_path, sim, slack, channels=channels, rules=rules, alerts=alerts)
    receiver.set_mode("fail", "/hook")
    clock = FakeClock()
    with daemon_on(cfg, clock) as daemon:
        await daemon.poll_cycle()
        sim.create_run(condition="Pending")
        for _ in range(4):
            await cycle(daemon, clock)
        await daemon.aclose()
    [alert] = slack.top_level()
    assert alert.channel == OTHER_ID and alert.text == "🚨 runwatch: channel hook is failing"
    assert alert.blocks[0]["text"]["text"].startswith("*🚨 runwatch: channel hook is failing*\n")


async def test_it_shows_hostile_api_text_literally_and_pings_no_one(
    tmp_path: Path, sim: Simulator, slack: FakeSlack
) -> None:
    """Mentions, links and Markdown in a run's flow, reason and message arrive escaped in
    every text of the message and its reply; only runwatch's own links and dates are markup."""
    hostile = "<!channel> @here <http://evil.example|totally safe> *now* `rm` & co"
    clock = FakeClock()
    with daemon_on(config(tmp_path, sim, slack), clock) as daemon:
        await daemon.poll_cycle()
        run_id = sim.create_run(condition="Running", flow="flow<!here>")
        await cycle(daemon, clock)
        sim.append_condition(run_id, "Failed", reason=hostile, message=hostile)
        await cycle(daemon, clock)
        await daemon.aclose()
    [message] = slack.top_level()
    [reply] = slack.replies(message.ts)
    for shown in (message, reply):
        texts = list(iter_texts(shown))
        plain = {b["text"]["text"] for b in shown.blocks if b["type"] == "header"}
        for text in texts:
            if text in plain:
                continue  # a header is plain_text: Slack never parses it
            for markup in re.findall(r"<[^<>]*>", text):
                assert markup.startswith(("<https://", "<!date^")), markup
            assert "@here" not in text and "*now*" not in text
        assert any("&lt;!channel&gt;" in text for text in texts)
        assert any("&lt;http://evil.example|totally safe&gt;" in text for text in texts)


async def test_it_paces_posts_at_one_a_second_per_channel_and_edits_unpaced(
    tmp_path: Path, sim: Simulator, slack: FakeSlack
) -> None:
    """Three new runs at once make three posts a second apart (on the daemon's clock); their
    edits follow without waiting."""
    clock = FakeClock()
    with daemon_on(config(tmp_path, sim, slack), clock) as daemon:
        await daemon.poll_cycle()
        runs = [sim.create_run(condition="Pending") for _ in range(3)]
        clock.advance(30)
        await daemon.poll_cycle()
        clock.sleeps.clear()
        assert await daemon.deliver_once() == 3
        assert clock.sleeps == [1.0, 1.0]
        for run_id in runs:
            sim.append_condition(run_id, "Running")
        clock.advance(30)
        await daemon.poll_cycle()
        clock.sleeps.clear()
        assert await daemon.deliver_once() == 3
        assert clock.sleeps == []
        await daemon.aclose()


async def test_it_checks_a_slack_channel_by_posting_and_editing_a_test_message(
    tmp_path: Path, sim: Simulator, slack: FakeSlack
) -> None:
    """`runwatch notify-test` reports the post and the edit of its message, token unshown."""
    cfg = config(tmp_path, sim, slack)
    outcome = run_cli("notify-test", "-c", str(cfg))
    assert outcome.code == 0, outcome.stdout + outcome.stderr
    lines = outcome.stdout.splitlines()
    assert re.fullmatch(rf"ml: OK posted a test message to {CHANNEL_ID} \(ts [0-9.]+\)", lines[0])
    assert lines[1] == "ml: OK edited it in place (slack #ml-runs via 127.0.0.1)"
    [message] = slack.top_level()
    assert message.edits == 1 and "edited in place" in message.text
    checked = run_cli("check", "-c", str(cfg))
    assert checked.code == 0 and "Slack #ml-runs" in checked.stdout
    for text in (outcome.stdout, outcome.stderr, checked.stdout, checked.stderr):
        assert TOKEN not in text
    assert TOKEN in load_config(cfg).secrets  # registered for redaction like every secret


def test_it_loses_no_update_when_killed_between_the_post_and_its_record(
    tmp_path: Path, sim: Simulator, slack: FakeSlack
) -> None:
    """SIGKILL while Slack holds its answer to a post costs at most one extra message: the
    next start posts again, and the run's later change edits that message."""
    cfg = config(tmp_path, sim, slack, poll={"interval": "200ms"})
    stderr = []
    with DaemonProcess(cfg) as daemon:
        daemon.wait_for_event("baseline.recorded")
        slack.hold(POST)
        run_id = sim.create_run(condition="Pending", flow="killed-mid-post")
        slack.wait_for(slack.arrived(POST), what="the first post")
        daemon.signal(signal.SIGKILL)
        daemon.wait(timeout=20)
        stderr.append(daemon.stderr)
    slack.release()
    assert len(slack.top_level()) == 1  # Slack posted it; runwatch never heard so

    with DaemonProcess(cfg) as daemon:
        slack.wait_for(slack.arrived(POST, 2), what="the post after the restart")
        daemon.wait_for_event("delivery.sent", run=f"{sim.organization_id}/{run_id}")
        sim.append_condition(run_id, "Running")
        slack.wait_for(slack.arrived(UPDATE), what="the edit")
        daemon.wait_for_event("delivery.sent", count=2)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0
        stderr.append(daemon.stderr)
    orphan, message = slack.top_level()
    assert timeline(orphan) == ["Pending"] and orphan.edits == 0
    assert timeline(message) == ["Pending", "Running"] and message.edits == 1
    assert slack.calls_to(UPDATE)[0].args["ts"] == message.ts
    assert all(TOKEN not in text for text in stderr)
    for path in tmp_path.glob("state.db*"):
        assert TOKEN.encode() not in path.read_bytes()


# -- the sender alone, against the fake ------------------------------------------------------


def row(condition: str, at: int, run_id: str = "run_1") -> str:
    current = Condition(condition=condition, status="Reached", last_transition_time=at)
    event = Event(kind="transition", workspace="prod", organization_id="org", run_id=run_id,
                  previous=None, current=current, time_created=1_000, detected_at=at)  # fmt: skip
    return slack_row(event, console_url="https://vi.example.com/org/org")


def outgoing(*bodies: str) -> Outgoing:
    keys = tuple(f"k{i}" for i in range(len(bodies)))
    return Outgoing(title="t", body=bodies[-1], notify_type="info", event_keys=keys, parts=bodies)


def sender(fake: FakeSlack, token: str = TOKEN, **config: Any) -> SlackSender:
    settings = SlackConfig(token=token, channel=config.pop("channel", "#ml-runs"),
                           api_url=fake.api_url, **config)  # fmt: skip
    return SlackSender("ml", settings, book=MemoryBook(), clock=FakeClock())


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        ("invalid_auth", "check the bot token"),
        ("account_inactive", "install the app again"),
        ("token_revoked", "install the app again"),
        ("channel_not_found", "check slack.channel"),
        ("not_in_channel", "/invite @runwatch"),
        ("missing_scope", "chat:write"),
        ("invalid_blocks", ""),
    ],
)
async def test_it_takes_errors_that_cannot_pass_for_permanent(
    slack: FakeSlack, error: str, hint: str
) -> None:
    """Each `ok:false` error that a retry cannot cure is permanent, named, with what to do."""
    slack.fail(POST, error=error)
    target = sender(slack)
    outcome = await target.send(outgoing(row("Pending", 2_000)), timeout=5.0)
    await target.aclose()
    assert outcome.verdict == "permanent"
    assert f"chat.postMessage answered {error}" in outcome.detail and hint in outcome.detail
    assert TOKEN not in outcome.detail


@pytest.mark.parametrize(
    ("fault", "verdict"),
    [
        ({"status": 503}, "retry"),
        ({"status": 500, "error": "internal_error"}, "retry"),
        ({"error": "ratelimited"}, "retry"),
        ({"error": "service_unavailable"}, "retry"),
        ({"error": "fatal_error"}, "unknown"),
        ({"status": 200, "body": b"<html>proxy</html>"}, "retry"),
        ({"status": 404, "body": b"no such path"}, "permanent"),
    ],
)
async def test_it_retries_what_can_pass(slack: FakeSlack, fault: dict[str, Any],
                                        verdict: str) -> None:  # fmt: skip
    """Outages, Slack's transient errors and a proxy's page are retried; a fatal_error may
    have posted, so its outcome is unknown; a path that is not Slack's is permanent."""
    slack.fail(POST, **fault)
    target = sender(slack)
    outcome = await target.send(outgoing(row("Pending", 2_000)), timeout=5.0)
    await target.aclose()
    assert outcome.verdict == verdict, outcome.detail


async def test_it_calls_an_unanswered_post_unknown_and_an_unanswered_edit_a_retry(
    slack: FakeSlack,
) -> None:
    """A post sent without an answer may be in the channel (unknown); an edit can be redone."""
    target = sender(slack)
    slack.hold(POST)
    posted = await target.send(outgoing(row("Pending", 2_000)), timeout=0.3)
    slack.release()
    assert posted.verdict == "unknown" and "got no answer: ReadTimeout" in posted.detail
    assert (await target.send(outgoing(row("Pending", 2_000)), timeout=5.0)).ok
    slack.slow(UPDATE, 0.6)
    edited = await target.send(outgoing(row("Running", 3_000)), timeout=0.3)
    assert edited.verdict == "retry" and "got no answer" in edited.detail
    assert (await target.send(outgoing(row("Running", 3_000)), timeout=5.0)).ok  # slow, not out
    await target.aclose()


async def test_it_retries_a_failed_reply_without_repeating_the_edit(slack: FakeSlack) -> None:
    """When the thread reply of a send fails, its retry neither edits again nor posts a
    second message: it sends the reply only."""
    target = sender(slack)
    assert (await target.send(outgoing(row("Running", 2_000)), timeout=5.0)).ok
    slack.fail(POST, status=503)
    failing = outgoing(row("Failed", 3_000))
    assert (await target.send(failing, timeout=5.0)).verdict == "retry"
    assert (await target.send(failing, timeout=5.0)).ok
    await target.aclose()
    assert [c.method for c in slack.calls] == [POST, UPDATE, POST, POST]
    [message] = slack.top_level()
    assert message.edits == 1 and len(slack.replies(message.ts)) == 1


async def test_it_refuses_a_redirect_and_keeps_the_token_to_itself(slack: FakeSlack) -> None:
    """An answer redirecting elsewhere is permanent and not followed with the token."""
    slack.fail(POST, status=302, body=b"moved")
    target = sender(slack)
    outcome = await target.send(outgoing(row("Pending", 2_000)), timeout=5.0)
    await target.aclose()
    assert outcome.verdict == "permanent" and "redirect: not followed" in outcome.detail
    assert len(slack.calls) == 1


async def test_it_posts_the_message_again_when_an_overdue_notice_finds_its_thread_gone(
    slack: FakeSlack,
) -> None:
    """An overdue notice leaves the message as it is; when someone deleted it, the notice's
    reply goes to a fresh message instead."""
    target = sender(slack)
    assert (await target.send(outgoing(row("Pending", 2_000)), timeout=5.0)).ok
    [gone] = slack.top_level()
    slack.delete(gone.ts)
    pending = Condition(condition="Pending", status="Reached", last_transition_time=2_000)
    overdue = Event(kind="overdue", workspace="prod", organization_id="org", run_id="run_1",
                    previous=pending, current=pending, time_created=1_000, detected_at=9_000,
                    rule="stuck", elapsed_s=7_200)  # fmt: skip
    body = slack_row(overdue, console_url="https://vi.example.com/org/org")
    outcome = await target.send(outgoing(body), timeout=5.0)
    await target.aclose()
    assert outcome.ok, outcome.detail
    assert [c.method for c in slack.calls] == [POST, POST, POST, POST]
    assert slack.calls[1].answer == {"ok": False, "error": "thread_not_found"}
    [message] = slack.top_level()
    [reply] = slack.replies(message.ts)
    assert "has been *Pending* for 2h" in reply.text and reply.reply_broadcast is False

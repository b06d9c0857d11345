"""The native Slack channel: one message per run, edited in place, with a thread.

Theory: a Slack channel's lane is coalescing (`ChannelPolicy.coalesce`): the worker hands
one `Outgoing` per run carrying every pending row of it, oldest first. Each row's body is a
`core.slack_blocks.SlackRow`. One send then:

1. finds the run's message (`StateStore.slack_message`, per channel and run incarnation);
2. with none, posts one (`chat.postMessage`) showing the latest state, and records its
   channel id and `ts` at once, before anything else happens and before the send reports
   success; with one, edits it (`chat.update`) to the latest state: three pending changes
   make one edit. An edit answered `message_not_found` (someone deleted the message) posts
   a fresh one and records that;
3. posts one thread reply (`thread_ts`) per failure, error or overdue notice among the rows
   when `thread` is on, failures broadcast to the channel (`reply_broadcast`) unless the
   message itself was just posted showing that failure.

Restart-safe: after a restart the next event edits the message recorded before; a SIGKILL
between Slack's answer to the post and the record costs at worst one extra message (the
rows are still pending, so the next start posts again), never a lost update. A retried
send does not repeat what it already did (an identical edit, a reply posted): the steps
done are remembered until the send as a whole succeeds.

Slack's limits: an HTTP 429 (or `ratelimited`) sets a "not before" time for that method only
(Retry-After, else 1 s); a call of that method before then is not made and the send returns
`retry` with the time left, while the other method goes on. Posts (top-level and replies)
are paced at one per `POST_INTERVAL` per channel with the injected clock; edits are not
(the policy's `min_interval` stays 0 for Slack channels).

Outcomes: `invalid_auth`, `account_inactive`, `token_revoked`, `channel_not_found`,
`not_in_channel`, `missing_scope` and every other `ok:false` error that cannot succeed
later are permanent (dead at once, the error named in the detail); `ratelimited`, HTTP 429
and 5xx, Slack's transient errors and connections that could not be made are retried; a
post sent without an answer (a read timeout, a dropped connection) is `unknown` (it may be
in the channel); an edit without an answer is retried, since repeating an edit is harmless.
The token travels only in the Authorization header, redirects are not followed (it would
follow them), and every detail is passed through a `Redactor` of it.

Why a small httpx client and not slack_sdk's AsyncWebClient: runwatch needs two methods
(three with `conversations.list`, which it avoids: a post to `#name` answers the channel's
id, which is kept). httpx is already runwatch's HTTP client (same timeouts, same
injectable transport, same error translation as the Vi client and the webhook). The SDK
needs aiohttp and its six compiled dependencies (~17 MB installed), added 15 MB of RSS and
130-210 ms of import time on top of httpx (measured with /usr/bin/time and -X importtime),
and its retry handlers sleep on the real clock inside the call, where runwatch's worker owns
backoff and tests own time. It would also be tested against the same local fake: the SDK
brings no testing aid of its own that would replace one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx
import structlog

from runwatch import __version__
from runwatch.clock import SYSTEM_CLOCK, Clock
from runwatch.config.settings import SlackConfig
from runwatch.core.slack_blocks import SlackRow, read_row, shown_row, standalone, trial_message
from runwatch.delivery.senders import Outgoing, SendOutcome
from runwatch.redaction import Redactor, cut
from runwatch.state.store import SlackMessage
from runwatch.vi.retry import parse_retry_after

log = structlog.get_logger("runwatch.delivery.slack")

POST = "chat.postMessage"
UPDATE = "chat.update"
POST_INTERVAL = 1.0  # seconds between two posts to one channel: Slack's "1 per second"
DEFAULT_RATE_WAIT = 1.0  # a 429 without Retry-After
_QUOTED = 200

# Errors that pass by themselves: Slack's own trouble, or a request cut short.
_TRANSIENT = frozenset(
    {"ratelimited", "rate_limited", "internal_error", "service_unavailable", "request_timeout",
     "team_added_to_org"}
)  # fmt: skip
# "It's possible some aspect of the operation succeeded": a post may be in the channel.
_MAYBE_DONE = frozenset({"fatal_error"})
_HINTS = {
    "invalid_auth": "check the bot token (xoxb-...) in slack.token",
    "not_authed": "check the bot token (xoxb-...) in slack.token",
    "account_inactive": "the token's app or workspace is gone; install the app again",
    "token_revoked": "the token was revoked; install the app again and use its new token",
    "token_expired": "the token expired; use a bot token that does not (xoxb-...)",
    "channel_not_found": "check slack.channel (an id like C0123456789, or #name)",
    "not_in_channel": "invite the bot (/invite @runwatch) or give it chat:write.public",
    "missing_scope": "add the bot token scope chat:write (and reinstall the app)",
    "is_archived": "the channel is archived; unarchive it or point slack.channel elsewhere",
}


class MessageBook(Protocol):
    """Where a run's message is kept: the state store (`StateStore` has these two)."""

    def slack_message(
        self, channel: str, run_key: str, incarnation: int
    ) -> SlackMessage | None: ...
    def set_slack_message(self, message: SlackMessage) -> None: ...


class MemoryBook:
    """A `MessageBook` that forgets at exit: for senders built without a store (notify-test)."""

    def __init__(self) -> None:
        self._messages: dict[tuple[str, str, int], SlackMessage] = {}

    def slack_message(self, channel: str, run_key: str, incarnation: int) -> SlackMessage | None:
        return self._messages.get((channel, run_key, incarnation))

    def set_slack_message(self, message: SlackMessage) -> None:
        self._messages[(message.channel, message.run_key, message.incarnation)] = message


@dataclass(frozen=True, kw_only=True, slots=True)
class _Answer:
    """One call's result: Slack's answer when `ok`, else the outcome for the send."""

    ok: bool
    data: Mapping[str, Any]
    outcome: SendOutcome | None = None
    error: str | None = None  # Slack's error name, when it gave one


class SlackSender:
    """Posts and edits the runs' messages of one runwatch channel in one Slack channel."""

    def __init__(
        self,
        name: str,
        config: SlackConfig,
        *,
        book: MessageBook | None = None,
        clock: Clock = SYSTEM_CLOCK,
        transport: httpx.AsyncBaseTransport | None = None,
        post_interval: float = POST_INTERVAL,
    ) -> None:
        self._name = name
        self._config = config
        self._book: MessageBook = book if book is not None else MemoryBook()
        self._clock = clock
        self._post_interval = post_interval
        self._redact = Redactor([config.token])
        self._shown = f"slack {config.channel} via {httpx.URL(config.api_url).host}"
        self._http = httpx.AsyncClient(
            base_url=config.api_url,
            headers={
                "Authorization": f"Bearer {config.token}",
                "User-Agent": f"runwatch/{__version__}",
            },
            follow_redirects=False,
            transport=transport,
        )
        self._channel_id: str | None = None  # what Slack answered for a #name: kept
        self._not_before: dict[str, float] = {}  # method -> monotonic time of the next call
        self._last_post: float | None = None  # monotonic
        self._done: set[str] = set()  # steps of sends not yet accepted whole

    def describe(self) -> str:
        return self._shown

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- one send -------------------------------------------------------------------------

    async def send(self, message: Outgoing, *, timeout: float) -> SendOutcome:
        parts = list(message.parts) or [message.body]
        keys = [*message.event_keys, *(f"part-{i}" for i in range(len(message.event_keys),
                                                                   len(parts)))]  # fmt: skip
        titles = [*message.titles, *([message.title] * (len(parts) - len(message.titles)))]
        rows = [read_row(part) for part in parts]
        # Consecutive rows of one run incarnation make one step of the send; a row not
        # written for Slack (a self-alert) is a message of its own.
        segments: list[list[int]] = []
        for i, row in enumerate(rows):
            last = rows[segments[-1][-1]] if segments else None
            if row is not None and last is not None and _same_run(row, last):
                segments[-1].append(i)
            else:
                segments.append([i])
        steps: list[str] = []
        details: list[str] = []
        for segment in segments:
            group = [(row, keys[i]) for i in segment if (row := rows[i]) is not None]
            if group:
                outcome = await self._run(group, steps, timeout)
            else:
                i = segment[0]
                outcome = await self._alert(titles[i], parts[i], keys[i], steps, timeout)
            if not outcome.ok:
                return outcome
            details.append(outcome.detail)
        self._done.difference_update(steps)  # accepted whole: the rows will not come again
        return SendOutcome(verdict="ok", detail=f"{self._shown}: {'; '.join(details)}")

    async def _alert(
        self, title: str, body: str, key: str, steps: list[str], timeout: float
    ) -> SendOutcome:
        step = f"alert:{key}"
        if self._seen(steps, step):
            return SendOutcome(verdict="ok", detail="alert posted before")
        answer = await self._post(standalone(title, body), timeout)
        if not answer.ok:
            return _failed(answer)
        self._mark(steps, step)
        return SendOutcome(verdict="ok", detail=f"posted {answer.data.get('ts')}")

    async def _run(
        self, group: Sequence[tuple[SlackRow, str]], steps: list[str], timeout: float
    ) -> SendOutcome:
        rows = [row for row, _ in group]
        shown = shown_row(rows)
        stored = self._book.slack_message(self._name, shown.run, shown.incarnation)
        if stored is not None and stored.destination != self._config.channel:
            stored = None  # the channel was re-pointed: a message of its own there
        if stored is None:
            answer = await self._post(dict(shown.message), timeout)
            if not answer.ok:
                return _failed(answer)
            stored = self._record(shown, answer.data, steps)
            done = f"posted {stored.ts}"
        elif any(row.edit for row in rows) and not self._seen(steps, _show_step(stored, shown)):
            answer = await self._call(UPDATE, _update_args(stored, shown.message), timeout)
            if answer.error == "message_not_found":  # deleted in Slack: post a fresh one
                answer = await self._repost(stored, shown, timeout)
                if not answer.ok:
                    return _failed(answer)
                stored = self._record(shown, answer.data, steps)
                done = f"posted {stored.ts} (the message before was deleted)"
            elif not answer.ok:
                return _failed(answer)
            else:
                stored = dataclasses.replace(stored, updated_at=self._now_ms())
                self._book.set_slack_message(stored)
                self._mark(steps, _show_step(stored, shown))
                done = f"edited {stored.ts}"
        else:
            done = f"left {stored.ts} as it is"
        # A message posted by this send (or by its attempt before) told the channel already.
        fresh = self._seen(steps, f"posted:{stored.ts}")
        replies = 0
        if self._config.thread:
            for row, key in group:
                if row.reply is None:
                    continue
                step = f"reply:{stored.ts}:{key}"
                if self._seen(steps, step):
                    continue
                # The channel saw a freshly posted message: broadcasting what it shows
                # would tell it twice.
                broadcast = bool(row.reply.get("reply_broadcast")) and not (fresh and row is shown)
                answer = await self._post(_reply(stored, row.reply, broadcast), timeout)
                if answer.error == "thread_not_found":  # its message was deleted meanwhile
                    answer = await self._repost(stored, shown, timeout)
                    if not answer.ok:
                        return _failed(answer)
                    stored, fresh = self._record(shown, answer.data, steps), True
                    done = f"posted {stored.ts} (the message before was deleted)"
                    broadcast = broadcast and row is not shown
                    answer = await self._post(_reply(stored, row.reply, broadcast), timeout)
                if not answer.ok:
                    return _failed(answer)
                self._mark(steps, step)
                replies += 1
        return SendOutcome(
            verdict="ok", detail=done + (f", {replies} thread repl{'y' if replies == 1 else 'ies'}"
                                         if replies else "")
        )  # fmt: skip

    async def _repost(self, gone: SlackMessage, shown: SlackRow, timeout: float) -> _Answer:
        """Post the run's message again: someone deleted the one Slack had."""
        log.warning("slack.message_gone", channel=self._name, run=shown.run, ts=gone.ts,
                    hint="posting a fresh message for the run")  # fmt: skip
        return await self._post(dict(shown.message), timeout)

    def _seen(self, steps: list[str], step: str) -> bool:
        """Whether an attempt before did `step`; either way it belongs to this send now."""
        steps.append(step)
        return step in self._done

    def _mark(self, steps: list[str], step: str) -> None:
        """Remember a step done until its send is accepted whole (a retry skips it)."""
        self._done.add(step)
        steps.append(step)

    def _record(self, row: SlackRow, data: Mapping[str, Any], steps: list[str]) -> SlackMessage:
        """Write where a freshly posted message is, at once: before any other step, and
        before the send is reported delivered (see the module's theory)."""
        now = self._now_ms()
        message = SlackMessage(
            channel=self._name,
            run_key=row.run,
            incarnation=row.incarnation,
            destination=self._config.channel,
            slack_channel=str(data["channel"]),
            ts=str(data["ts"]),
            posted_at=now,
            updated_at=now,
        )
        self._book.set_slack_message(message)
        self._mark(steps, f"posted:{message.ts}")
        self._mark(steps, _show_step(message, row))
        log.info("slack.posted", channel=self._name, run=row.run, ts=message.ts)
        return message

    # -- notify-test ----------------------------------------------------------------------

    async def trial(self, *, host: str, timeout: float) -> list[tuple[bool, str]]:
        """`runwatch notify-test`: post a test message, then edit it; each step's result."""
        now = self._now_ms()
        first = trial_message(host=host, channel=self._name, epoch_ms=now, edited=False)
        answer = await self._post(first, timeout)
        if not answer.ok:
            assert answer.outcome is not None
            return [(False, f"posting a test message: {answer.outcome.detail}")]
        channel, ts = str(answer.data.get("channel")), str(answer.data.get("ts"))
        steps = [(True, f"posted a test message to {channel} (ts {ts})")]
        edited = trial_message(host=host, channel=self._name, epoch_ms=now, edited=True)
        target = SlackMessage(
            channel=self._name, run_key="runwatch/test", incarnation=0,
            destination=self._config.channel, slack_channel=channel, ts=ts, posted_at=now,
            updated_at=now,
        )  # fmt: skip
        answer = await self._call(UPDATE, _update_args(target, edited), timeout)
        if not answer.ok:
            assert answer.outcome is not None
            return [*steps, (False, f"editing it: {answer.outcome.detail}")]
        return [*steps, (True, f"edited it in place ({self._shown})")]

    # -- calls ----------------------------------------------------------------------------

    async def _post(self, payload: Mapping[str, Any], timeout: float) -> _Answer:
        """chat.postMessage, paced per channel; to the channel's id once Slack named it."""
        args = {
            "channel": self._channel_id or self._config.channel,
            "unfurl_links": False,
            "unfurl_media": False,
            "parse": "none",
            "link_names": False,
            **payload,
        }
        if self._last_post is not None and self._post_interval > 0:
            wait = min(self._post_interval, self._last_post + self._post_interval - self._mono())
            if wait > 0:
                await self._clock.sleep(wait)
        answer = await self._call(POST, args, timeout)
        self._last_post = self._mono()
        if answer.ok and "thread_ts" not in payload and answer.data.get("channel"):
            self._channel_id = str(answer.data["channel"])
        return answer

    async def _call(self, method: str, args: Mapping[str, Any], timeout: float) -> _Answer:
        wait = self._not_before.get(method, 0.0) - self._mono()
        if wait > 0:
            # Slack asked not to call this method yet: not even tried, so no extra 429.
            detail = f"{self._shown}: {method} rate-limited by Slack for {wait:.0f}s more"
            return _Answer(
                ok=False, data={}, error="ratelimited",
                outcome=SendOutcome(verdict="retry", detail=detail, retry_after=wait),
            )  # fmt: skip
        idempotent = method == UPDATE
        try:
            response = await self._http.post(
                method, content=_json(args), timeout=httpx.Timeout(timeout),
                headers={"Content-Type": "application/json; charset=utf-8"},
            )  # fmt: skip
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            return self._refused(method, "retry", f"failed: {type(exc).__name__}")
        except httpx.TransportError as exc:
            # Sent and not answered: a post may be in the channel; an edit can be redone.
            unanswered: Literal["retry", "unknown"] = "retry" if idempotent else "unknown"
            return self._refused(method, unanswered, f"got no answer: {type(exc).__name__}")
        except Exception as exc:  # a bug or an odd transport: retried, never the worker's end
            return self._refused(method, "retry", f"failed: {type(exc).__name__}")
        return self._read(method, response, idempotent=idempotent)

    def _read(self, method: str, response: httpx.Response, *, idempotent: bool) -> _Answer:
        status = response.status_code
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or "ok" not in data:
            text = cut(response.text, _QUOTED, self._redact) if response.content else ""
            what = f"answered HTTP {status}" + (f" ({text})" if text else "")
            if status == 429:
                return self._limited(method, response, what)
            if status >= 500 or 200 <= status < 300:  # an outage, or a proxy's page
                return self._refused(method, "retry", what)
            if 300 <= status < 400:
                what += ", a redirect: not followed (the token must not go elsewhere)"
            return self._refused(method, "permanent", what)
        if data.get("ok") is True:
            return _Answer(ok=True, data=data)
        error = str(data.get("error") or "unknown_error")
        what = f"answered {error}"
        if status == 429 or error in ("ratelimited", "rate_limited"):
            return self._limited(method, response, what)
        if error in _TRANSIENT or status >= 500:
            return self._refused(method, "retry", what, error=error)
        if error in _MAYBE_DONE:
            verdict: Literal["retry", "unknown"] = "retry" if idempotent else "unknown"
            return self._refused(method, verdict, what, error=error)
        needed = data.get("needed")
        if isinstance(needed, str):
            what += f" (needs {needed})"
        hint = _HINTS.get(error)
        return self._refused(
            method, "permanent", what + (f"; {hint}" if hint else ""), error=error
        )

    def _limited(self, method: str, response: httpx.Response, what: str) -> _Answer:
        wait = parse_retry_after(response.headers.get("retry-after"), now=self._clock.time())
        wait = DEFAULT_RATE_WAIT if wait is None else wait
        self._not_before[method] = self._mono() + wait
        log.warning("slack.rate_limited", channel=self._name, method=method, retry_after=wait)
        detail = cut(f"{self._shown}: {method} {what} (Retry-After {wait:g}s)", 400, self._redact)
        return _Answer(
            ok=False, data={}, error="ratelimited",
            outcome=SendOutcome(verdict="retry", detail=detail, retry_after=wait),
        )  # fmt: skip

    def _refused(
        self,
        method: str,
        verdict: Literal["retry", "permanent", "unknown"],
        what: str,
        *,
        error: str | None = None,
    ) -> _Answer:
        """A call that did not succeed; `what` says how ("answered invalid_auth; ...")."""
        detail = cut(f"{self._shown}: {method} {what}", 400, self._redact)
        return _Answer(
            ok=False, data={}, error=error, outcome=SendOutcome(verdict=verdict, detail=detail)
        )

    def _mono(self) -> float:
        return self._clock.monotonic()

    def _now_ms(self) -> int:
        return round(self._clock.time() * 1000)


def _same_run(a: SlackRow, b: SlackRow) -> bool:
    return (a.run, a.incarnation) == (b.run, b.incarnation)


def _failed(answer: _Answer) -> SendOutcome:
    assert answer.outcome is not None
    return answer.outcome


def _json(args: Mapping[str, Any]) -> bytes:
    return json.dumps(args, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _show_step(message: SlackMessage, row: SlackRow) -> str:
    """The step "message `ts` shows this payload": done once per payload and message."""
    digest = hashlib.sha256(_json(row.message)).hexdigest()[:16]
    return f"show:{message.ts}:{digest}"


def _update_args(message: SlackMessage, payload: Mapping[str, Any]) -> dict[str, Any]:
    # parse "none": chat.update defaults to "client", which would turn "@here" into a ping.
    return {
        "channel": message.slack_channel,
        "ts": message.ts,
        "parse": "none",
        "link_names": False,
        **payload,
    }


def _reply(message: SlackMessage, reply: Mapping[str, Any], broadcast: bool) -> dict[str, Any]:
    return {
        "channel": message.slack_channel,
        "thread_ts": message.ts,
        "text": reply.get("text", ""),
        "reply_broadcast": broadcast,
    }

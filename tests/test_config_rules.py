"""Rules in the configuration: time-in-state rules (for, stalled_for, repeat) and overdue."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_config import config_text, env

from runwatch.config.describe import describe
from runwatch.config.loading import load_config
from runwatch.config.settings import Config
from runwatch.core.rules import Match, Rule
from runwatch.errors import ConfigError


def with_rule(rule: str) -> str:
    """A valid file with one rule named `r` whose other keys are `rule` (indented by four)."""
    return (
        config_text(
            """
            workspaces:
              - name: prod
                organization_id: org-1
                secret_key: ${DATATURE_VI_SECRET_KEY}
            channels: {ops: "json://127.0.0.1:9/hook"}
            rules:
              - name: r
                notify: [ops]
            """
        )
        + rule.strip("\n")
        + "\n"
    )


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "runwatch.yaml"
    path.write_text(text)
    return load_config(path, environ=env())


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return caught.value.problems


def test_it_reads_for_stalled_for_and_repeat_in_seconds(tmp_path: Path) -> None:
    """for and stalled_for are durations on the match, repeat one on the rule."""
    text = with_rule("    match: {condition: Pending, for: 2h}\n    repeat: 30m")
    (rule,) = load(tmp_path, text).rules
    assert rule == Rule(
        name="r", match=Match(condition=("Pending",), for_=7200.0), notify=("ops",), repeat=1800.0
    )
    text = with_rule("    match: {stalled_for: 90m, event: overdue}")
    (rule,) = load(tmp_path, text).rules
    assert rule.match == Match(stalled_for=5400.0, event=("overdue",))
    assert rule.repeat is None


def test_it_describes_a_time_in_state_rule(tmp_path: Path) -> None:
    """`runwatch check` shows the rule as overdue-only, with its thresholds."""
    config = load(tmp_path, with_rule("    match: {condition: Running, for: 1d}\n    repeat: 6h"))
    assert "rule r: event=overdue condition=Running for=1d repeat=6h -> ops" in describe(config)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            "    match: {for: 1h, stalled_for: 2h}",
            ["rules[0].match: give at most one of for and stalled_for (line 9)"],
        ),
        (
            "    match: {for: 1h, event: [overdue, transition]}",
            [
                "rules[0].match.event[1]: a rule with match.for matches only overdue events, "
                "not 'transition' (line 9); leave event out, or write event: overdue"
            ],
        ),
        (
            "    match:\n      stalled_for: 1h\n      event: new",
            [
                "rules[0].match.event: a rule with match.stalled_for matches only overdue "
                "events, not 'new' (line 11); leave event out, or write event: overdue"
            ],
        ),
        (
            "    match: {event: overdue}",
            [
                "rules[0].match.event: an overdue event comes from a time-in-state rule "
                "(line 9); add match.for (time in the condition) or match.stalled_for (time "
                "without any change), e.g. for: 2h"
            ],
        ),
        (
            "    repeat: 1h",
            [
                "rules[0].repeat: repeat needs match.for or match.stalled_for: it repeats a "
                "time-in-state reminder (line 9)"
            ],
        ),
        (
            "    match: {for: 0s}\n    repeat: -1m",
            [
                "rules[0].match.for: must be longer than 0s (line 9)",
                "rules[0].repeat: '-1m' is not a duration (line 10); write e.g. 30s, 15m, 2h, "
                "1d, 1h30m, 500ms (or a number of seconds)",
            ],
        ),
        (
            "    match: {event: created}",
            [
                "rules[0].match.event: unknown event kind 'created' (line 9); "
                "use one of: transition, new, deleted, overdue"
            ],
        ),
    ],
)
def test_it_refuses_time_in_state_rules_that_could_never_fire_as_written(
    tmp_path: Path, rule: str, expected: list[str]
) -> None:
    """for/stalled_for go with overdue events only, one of the two, and repeat needs one."""
    assert problems(tmp_path, with_rule(rule)) == expected

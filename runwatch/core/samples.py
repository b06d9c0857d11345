"""Sample events: one of every kind, together holding every optional field, for checking a
template before it is used (`validate_template`, `runwatch check`)."""

from __future__ import annotations

from typing import Any

from runwatch.core.model import (
    FAILED,
    PENDING,
    REACHED,
    RUNNING,
    SUCCEEDED,
    Condition,
    Enrichment,
    Event,
)


def sample_events() -> tuple[Event, ...]:
    """A failed transition, a new succeeded run with metrics, a deletion and an overdue run.

    Order matters to `validate_template`'s messages, which name the first sample that fails.
    """
    org = "0f9e8d7c-6b5a-4a3b-9c8d-7e6f5a4b3c2d"
    created = 1_717_236_000_000  # 2024-06-01T10:00:00Z
    pending = Condition(condition=PENDING, status=REACHED, last_transition_time=created + 2_000)
    running = Condition(condition=RUNNING, status=REACHED, last_transition_time=created + 60_000)
    failed = Condition(
        condition=FAILED,
        status=REACHED,
        last_transition_time=created + 4_380_000,  # 1h 12m after it started running
        reason="OutOfMemory",
        message="Container exceeded its memory limit",
    )
    succeeded = Condition(
        condition=SUCCEEDED, status=REACHED, last_transition_time=created + 8_100_000
    )
    common: dict[str, Any] = {
        "workspace": "prod",
        "organization_id": org,
        "flow_name": "yolo-detector",
        "training_project": "traffic-signs",
        "attributes": {"team": "vision"},
        "time_created": created,
    }
    return (
        Event(
            kind="transition",
            run_id="run_ab12",
            previous=pending,
            current=failed,
            skipped=(running,),
            history=(pending, running, failed),
            killed_at=created + 4_300_000,
            log="https://logs.vi.datature.com/run_ab12",
            generation=4,
            detected_at=created + 4_400_000,
            **common,
        ),
        Event(
            kind="new",
            run_id="run_cd34",
            previous=None,
            current=succeeded,
            skipped=(pending, running),
            history=(pending, running, succeeded),
            detected_at=created + 8_130_000,
            enrichment=Enrichment(
                project_name="Traffic Signs",
                epoch=40,
                model_id="out_7f3a",
                metrics=(
                    ("mAP", 0.71318),
                    ("precision", 0.80112),
                    ("recall", 0.662),
                    ("images", 1200),
                    ("converged", True),
                    ("best", "epoch_38"),
                    ("lr", None),
                    ("loss", 0.0123456),
                ),
            ),
            **common,
        ),
        Event(
            kind="deleted",
            run_id="run_ef56",
            previous=running,
            current=None,
            detected_at=created + 90_000,
            **common,
        ),
        Event(
            kind="overdue",
            run_id="run_gh78",
            previous=None,
            current=pending,
            history=(pending,),
            detected_at=created + 9_062_000,
            rule="stuck-pending",
            elapsed_s=9_060,  # 2h 31m
            reminder=2,
            **common,
        ),
    )

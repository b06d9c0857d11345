"""`runwatch demo` in-process: the story's notifications reach the console, then it ends."""

from __future__ import annotations

import asyncio
import io
import re
import time

import pytest

from runwatch.cli import demo

RULE = "─" * 60


def notifications(text: str) -> list[tuple[str, str]]:
    """The (title, body) of every console notification, in the order they were printed."""
    blocks = text.split(f"\n{RULE}\n")
    # Each notification prints: rule, title, rule, body; so titles and bodies alternate.
    return [(blocks[i], blocks[i + 1].split("\n\n")[0]) for i in range(1, len(blocks) - 1, 2)]


async def test_it_plays_the_story_to_the_console_and_ends_by_itself() -> None:
    """Success, failure with its reason, a new run and a cancellation each arrive once, named
    by their training project; a success shows the latest model's epoch and metrics."""
    out = io.StringIO()
    started = time.monotonic()
    status = await asyncio.wait_for(demo.play(out=out, speed=4.0), timeout=30)
    seconds = time.monotonic() - started
    text = out.getvalue()

    assert status == 0
    assert seconds < 12, f"the demo at speed 4 took {seconds:.1f}s"
    assert re.search(r"baseline recorded: \d+ runs, nothing sent", text)
    assert text.rstrip().endswith("demo finished; 0 notification(s) left undelivered.")
    titles = [title for title, _ in notifications(text)]
    short = [re.sub(r" — run_[0-9a-f]{12} \(demo\)$", "", t) for t in titles]
    # Runs changing between the same two polls may arrive in either order; one run's may not.
    assert sorted(short) == sorted(
        [
            "✅ Defect inspection succeeded",
            "❌ Retail shelves failed",
            "⏳ Traffic cams pending",
            "🏃 Traffic cams running",
            "🚫 Aerial survey cancelled",
            "✅ Traffic cams succeeded",
        ]
    )
    assert [t for t in short if "Traffic cams" in t] == [
        "⏳ Traffic cams pending",
        "🏃 Traffic cams running",
        "✅ Traffic cams succeeded",
    ]
    bodies = dict(notifications(text))
    # segformer-b2 (semantic segmentation) and yolo-detector (object detection) saved
    # checkpoints on the way: each success shows the latest one's epoch and metrics.
    [segmentation] = [b for t, b in bodies.items() if "Defect inspection succeeded" in t]
    metrics = r"Running → Succeeded · epoch \d+ · mIoU 0\.\d+ · pixel_accuracy 0\.\d+"
    assert re.match(metrics, segmentation), segmentation
    [detection] = [b for t, b in bodies.items() if "Traffic cams succeeded" in t]
    assert re.match(r"Running → Succeeded · epoch \d+ · mAP 0\.\d+ · mAP50 0\.\d+", detection)
    [failed] = [b for t, b in bodies.items() if "failed" in t]
    assert failed.startswith("Running → Failed (FailedReach) · OutOfMemory: CUDA out of memory")
    assert "while allocating 2.1 GiB at epoch 14" in failed
    [new] = [b for t, b in bodies.items() if "pending" in t]
    assert new.startswith("New run · Pending")
    [cancelled] = [b for t, b in bodies.items() if "cancelled" in t]
    assert "KilledByUser" in cancelled
    assert "**" not in text  # a console channel gets plain text, not Markdown


async def test_it_refuses_a_speed_that_is_not_positive() -> None:
    """A zero speed would divide the story's times by zero: it is refused before anything starts."""
    with pytest.raises(ValueError, match="speed"):
        await demo.play(out=io.StringIO(), speed=0)

"""Wire documents built from records, and the keyset pages and page tokens that carry them.

Theory: documents are built per request from a record, never stored (100,000 runs cost
records, not documents), exactly in the shapes of vi-wire-format.md: Run, Model (a run's
output) and TrainingProject, each with `metadata.generation` and an `etag` that change with
every change of its record. Nested flow parts of a Run document are shared with the catalogue:
`deep_copy` before mutating one.

A page token names the key of the item a page continues from and its direction (`n`: the
page after it, `p`: the page before it). Every collection is a sorted list of `(int, str)`
keys, so one `page` function serves runs, outputs and projects.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
from collections.abc import Sequence
from typing import Any, Literal

from runwatch.simulator.checkpoints import OutputRecord
from runwatch.simulator.population import ProjectRecord, RunRecord

Key = tuple[int, str]

# A token before every key: listing from it is page 1 again (used by repeat_token on page 1).
HEAD_KEY: Key = (-(2**62), "")

DOWNLOAD_SECONDS = 3600  # how long a Model's download URL stays valid


def run_document(record: RunRecord, org: str) -> dict[str, Any]:
    """The Run as the API returns it. Nested flow parts are shared: copy before mutating."""
    flow = record.flow
    return {
        "kind": "Run",
        "workspaceId": org,
        "runId": record.run_id,
        "spec": {
            "flow": {
                "name": flow.name,
                "schema": flow.schema,
                "tolerations": flow.tolerations,
                "settings": flow.settings,
                "blocks": flow.blocks,
                "trainingProject": record.training_project,
            },
            "killedAt": record.killed_at,
            "trainingProject": record.training_project,
        },
        "status": {
            "log": f"https://vi.datature.com/org/{org}/runs/{record.run_id}/logs",
            "observedGeneration": record.generation,
            "conditions": [
                {
                    "condition": c[0],
                    "status": c[1],
                    "lastTransitionTime": c[2],
                    "reason": c[3],
                    "message": c[4],
                }
                for c in record.conditions
            ],
        },
        "metadata": {
            "timeCreated": record.time_created,
            "lastUpdated": record.last_updated,
            "generation": record.generation,
            "attributes": dict(record.attributes),
        },
        "selfLink": f"/workspaces/{org}/runs/{record.run_id}",
        "etag": record.etag,
    }


def model_document(
    output: OutputRecord, run_id: str, org: str, *, contents: bool, now_ms: int
) -> dict[str, Any]:
    """One output as a Model document; `contents` adds a download URL valid for an hour."""
    path = f"{org}/runs/{run_id}/outputs/{output.output_id}"
    status: dict[str, Any] = {
        "observedGeneration": output.generation,
        "conditions": [
            {
                "condition": "Saved",
                "status": "Reached",
                "lastTransitionTime": output.time_created,
                "reason": None,
                "message": None,
            }
        ],
        "storageObject": f"gs://vi-sim-models/{path}/model.zip",
    }
    if contents:
        # Epoch milliseconds, like every other timestamp of the API (the SDK leaves it open).
        expires = now_ms + DOWNLOAD_SECONDS * 1000
        signature = hashlib.blake2b(f"{path}/{expires}".encode(), digest_size=16).hexdigest()
        status["contents"] = {
            "downloadUrl": {
                # .invalid: a URL that can never reach a real host.
                "url": f"https://storage.vi-sim.invalid/{path}/model.zip"
                f"?expires={expires}&signature={signature}",
                "expiresAt": expires,
            }
        }
    return {
        "kind": "RunOutput",
        "workspaceId": org,
        "runId": run_id,
        "runOutputId": output.output_id,
        "spec": {
            "kind": output.kind,
            "epoch": output.epoch,
            "evaluationMetrics": dict(output.metrics) if output.metrics is not None else None,
        },
        "status": status,
        "metadata": {
            "timeCreated": output.time_created,
            "lastUpdated": output.last_updated,
            "generation": output.generation,
            "attributes": {},
        },
        "selfLink": f"/workspaces/{org}/runs/{run_id}/runOutputs/{output.output_id}",
        "etag": output.etag,
    }


def project_document(
    project: ProjectRecord, org: str, runs: Sequence[RunRecord], outputs: Sequence[str]
) -> dict[str, Any]:
    """A TrainingProject; `runs` are its runs' records and `outputs` their output ids."""
    return {
        "kind": "TrainingProject",
        "workspaceId": org,
        "trainingProjectId": project.project_id,
        "spec": {"name": project.name, "description": project.description, "type": project.type},
        "status": {
            "runs": [r.run_id for r in runs],
            "flows": sorted({r.flow.name for r in runs}),
            "runOutputs": list(outputs),
            "tasks": [],
        },
        "metadata": {
            "timeCreated": project.time_created,
            "lastUpdated": project.last_updated,
            "generation": project.generation,
            "attributes": {},
        },
        "selfLink": f"/workspaces/{org}/trainingProjects/{project.project_id}",
        "etag": project.etag,
    }


def deep_copy(value: Any) -> Any:
    """Copy JSON-shaped data (much faster than copy.deepcopy for dicts of lists of scalars)."""
    if isinstance(value, dict):
        return {k: deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [deep_copy(v) for v in value]
    return value


# --- pages ----------------------------------------------------------------------------------


def encode_token(direction: Literal["n", "p"], key: Key) -> str:
    raw = f"{direction}:{-key[0]}:{key[1]}".encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_token(token: str) -> tuple[Literal["n", "p"], Key] | None:
    """The (direction, key) a token names, or None when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        direction, number, name = raw.split(":", 2)
        key = (-int(number), name)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    if direction not in ("n", "p"):
        return None
    parsed: Literal["n", "p"] = "n" if direction == "n" else "p"
    # Reject strings that decode by accident: a real token re-encodes to itself.
    if encode_token(parsed, key) != token:
        return None
    return parsed, key


def page_size(query: dict[str, str], cap: int) -> int | None:
    """The page size `s` asks for (default 10), capped; None when it is not a positive int."""
    try:
        size = int(query.get("s", "10"))
    except ValueError:
        return None
    return min(size, cap) if size >= 1 else None


def page(
    order: Sequence[Key], token: str | None, size: int
) -> tuple[Sequence[Key], str | None, str | None] | None:
    """The keys of the page `token` names, with its nextPage and prevPage; None: bad token."""
    if token is None:
        start, end = 0, min(size, len(order))
    else:
        decoded = decode_token(token)
        if decoded is None:
            return None
        direction, key = decoded
        if direction == "n":
            start = bisect.bisect_right(order, key)
            end = min(start + size, len(order))
        else:
            end = bisect.bisect_left(order, key)
            start = max(0, end - size)
    keys = order[start:end]
    next_page = encode_token("n", keys[-1]) if keys and end < len(order) else None
    prev_page = encode_token("p", keys[0]) if keys and start > 0 else None
    return keys, next_page, prev_page

"""The vi-sdk 0.1.0b7 response structs for model outputs and training projects, transcribed.

vi-wire-format.md ("More endpoints") describes them; these are the same msgspec structs
(`vi/api/responses.py`, `vi/api/resources/models/responses.py`,
`vi/api/resources/training_projects/responses.py`) without their display methods, so tests
can decode the simulator's documents exactly as the SDK would. `sdk_decoders` returns the
official structs as well when the vi-sdk package is installed.
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Any, Generic, TypeVar
from unittest import mock

import msgspec
from msgspec import Struct, field

T = TypeVar("T")


class ViResponse(Struct, rename="camel", kw_only=True, omit_defaults=True):
    pass


class Pagination(ViResponse, Generic[T]):
    next_page: str | None = None
    prev_page: str | None = None
    items: list[T] = field(default_factory=list)


class ResourceMetadata(ViResponse):
    time_created: int
    last_updated: int
    generation: int
    attributes: dict[str, str]


class ModelSpec(ViResponse):
    kind: str
    epoch: int | None = None
    evaluation_metrics: dict[Any, Any] | None = None


class ModelDownloadUrl(ViResponse):
    url: str
    expires_at: int


class ModelContents(ViResponse):
    download_url: ModelDownloadUrl


class ModelStatus(ViResponse):
    observed_generation: int
    conditions: list[dict[Any, Any]]
    storage_object: str
    contents: ModelContents | None = None


class Model(ViResponse):
    kind: str
    run_id: str
    metadata: ResourceMetadata
    spec: ModelSpec
    status: ModelStatus
    self_link: str
    etag: str
    organization_id: str = field(name="workspaceId")
    model_id: str = field(name="runOutputId")


class TrainingProjectSpec(ViResponse):
    name: str
    description: str | None = None
    type: str = ""


class TrainingProjectStatus(ViResponse):
    runs: list[str] = field(default_factory=list)
    flows: list[str] = field(default_factory=list)
    run_outputs: list[str] = field(default_factory=list)
    tasks: list[Any] = field(default_factory=list)


class TrainingProject(ViResponse, tag_field="kind"):
    organization_id: str = field(name="workspaceId")
    training_project_id: str
    spec: TrainingProjectSpec
    status: TrainingProjectStatus
    metadata: ResourceMetadata
    self_link: str
    etag: str


@functools.cache
def import_sdk() -> bool:
    """Import vi-sdk if it is installed. It makes ~/.datature/vi/logs when imported, so it is
    imported with HOME in a temporary directory: tests leave the home directory alone."""
    with mock.patch.dict(os.environ, {"HOME": tempfile.mkdtemp(prefix="vi-sdk-home-")}):
        try:
            import vi  # noqa: F401
        except ImportError:
            return False
    return True


def sdk_decoders() -> list[tuple[str, Any, Any, Any]]:
    """(source, Pagination, Model, TrainingProject) from this transcription, and from the
    installed vi-sdk when there is one."""
    decoders: list[tuple[str, Any, Any, Any]] = [
        ("transcribed", Pagination, Model, TrainingProject)
    ]
    if not import_sdk():
        return decoders
    from vi.api.resources.models.responses import Model as SdkModel
    from vi.api.resources.training_projects.responses import (
        TrainingProject as SdkTrainingProject,
    )
    from vi.api.responses import Pagination as SdkPagination

    decoders.append(("vi-sdk", SdkPagination, SdkModel, SdkTrainingProject))
    return decoders


def decode_models(body: bytes) -> list[list[Any]]:
    """The page's items as each decoder's Model structs (msgspec.ValidationError if not)."""
    return [
        msgspec.json.decode(body, type=page[model]).items for _, page, model, _ in sdk_decoders()
    ]


def decode_projects(body: bytes) -> list[list[Any]]:
    return [
        msgspec.json.decode(body, type=page[project]).items
        for _, page, _, project in sdk_decoders()
    ]


def decode_project(body: bytes) -> list[Any]:
    return [msgspec.json.decode(body, type=project) for _, _, _, project in sdk_decoders()]

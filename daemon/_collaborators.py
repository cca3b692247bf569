"""What the pipeline needs from its collaborators, as Protocols (no ``Any``).

The pipeline is written against these shapes, not against the concrete classes:

- :class:`JobStore`: the four :class:`~marginwatch.storage.Store` calls that decide a
  claimed job's outcome (the store satisfies it structurally);
- :class:`Stages`: the engine's stages bound to one model
  (:class:`~marginwatch.daemon._stages.EngineStages`);
- :data:`Infer`: the backend's ``infer(tiles (N, 3, S, S)) -> Inference``.

Types of the engine and storage appear only under ``TYPE_CHECKING``, so importing this
module loads neither torch nor SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch
    from marginwatch.engine.assessment import Assessment, PreparedImage
    from marginwatch.engine.inference import Inference
    from marginwatch.storage.records import AssessmentRecord, FailOutcome, FinishOutcome

__all__ = ["Infer", "JobStore", "Stages"]

#: The backend: tiles (N, 3, S, S) uint8 RGB (or normalised float) -> one Inference.
Infer = Callable[["torch.Tensor"], "Inference"]


class JobStore(Protocol):
    """The store calls that settle a claimed job (each one transaction)."""

    def find_assessment(self, sha256: str, model_id: int) -> int | None: ...

    def finish_job(
        self, job_id: int, owner: str, result: AssessmentRecord
    ) -> FinishOutcome: ...

    def mark_duplicate(
        self, job_id: int, owner: str, sha256: str, of_prediction_id: int
    ) -> None: ...

    def fail_job(
        self,
        job_id: int,
        owner: str,
        error_class: str,
        message: str,
        retry_after_seconds: float | None,
        max_attempts: int,
        *,
        quality: Mapping[str, Any] | None = None,
    ) -> FailOutcome: ...

    def release_job(self, job_id: int, owner: str) -> None: ...

    def wait_for_change(self, job_id: int, owner: str, retry_after_seconds: float) -> str: ...

    def follow_move(self, job_id: int, owner: str) -> str | None: ...


class Stages(Protocol):
    """The engine's stages for one model: read and plan, aggregate, make the record.

    ``record`` runs in the finisher before the finishing transaction opens; it encodes
    the heatmap, so the store receives bytes only.
    """

    def prepare(self, path: str) -> PreparedImage: ...

    def finish(self, prepared: PreparedImage, inference: Inference | None) -> Assessment: ...

    def record(self, assessment: Assessment) -> AssessmentRecord: ...

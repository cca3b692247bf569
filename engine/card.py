"""The model card: ``model.json``, the half of a model artefact that is not weights.

A checkpoint carries its own preprocessing: micrometres per pixel, tile size,
device profile (channel mapping and staining constants), normalisation, class names,
temperature and threshold. Training, evaluation, the daemon, ONNX and TensorRT read
them from here. This module imports no torch, so storage and the dashboard can read a
card cheaply.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ModelCardError, ModelError

__all__ = [
    "ARCHITECTURES",
    "CARD_FILENAME",
    "FORMAT_VERSION",
    "WEIGHTS_FILENAME",
    "Architecture",
    "DeviceProfile",
    "ModelCard",
    "Normalisation",
    "QualityThresholds",
    "read_card",
]

FORMAT_VERSION = 1
CARD_FILENAME = "model.json"
WEIGHTS_FILENAME = "weights.safetensors"

Architecture = Literal[
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "convnext_tiny",
    "vgg_small",
]
ARCHITECTURES: tuple[str, ...] = Architecture.__args__  # type: ignore[attr-defined]

# Gareau et al. digital H&E constants: the RGB colour of pure haematoxylin / eosin.
GAREAU_HAEMATOXYLIN_RGB = (0.30, 0.20, 1.0)
GAREAU_EOSIN_RGB = (1.0, 0.55, 0.88)

RGB = tuple[float, float, float]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceProfile(_Frozen):
    """How an exported image's channels become the model's RGB.

    ``kind``: ``grey`` (one fluorescence channel, e.g. Histolog acridine orange),
    ``reflectance+fluorescence`` (two channels, e.g. VivaScope 2500) or ``rgb`` (an
    export already in digital H&E). ``staining`` picks the two-channel formula.
    """

    kind: Literal["grey", "reflectance+fluorescence", "rgb"] = "grey"
    staining: Literal["gareau-linear", "beer-lambert"] = "gareau-linear"
    haematoxylin_rgb: RGB = GAREAU_HAEMATOXYLIN_RGB
    eosin_rgb: RGB = GAREAU_EOSIN_RGB
    reflectance_channel: int = Field(0, ge=0, le=3)
    fluorescence_channel: int = Field(1, ge=0, le=3)
    intensity_scaling: Literal["dtype-range", "percentile"] | None = Field(
        None, description="None: percentile for fluorescence kinds, dtype-range for rgb"
    )
    percentile_high: float = Field(99.5, gt=50.0, le=100.0)
    beer_lambert_strength: float = Field(2.5, gt=0.0, description="optical density at full signal")
    default_um_per_px: float | None = Field(
        None, gt=0, description="pixel size when neither the file nor the config has one"
    )

    @property
    def name(self) -> str:
        """Short label stored with each result, e.g. ``reflectance+fluorescence/gareau-linear``."""
        if self.kind == "reflectance+fluorescence":
            return f"{self.kind}/{self.staining}"
        return self.kind

    @property
    def scaling(self) -> str:
        if self.intensity_scaling is not None:
            return self.intensity_scaling
        return "dtype-range" if self.kind == "rgb" else "percentile"

    @property
    def channels(self) -> int:
        return {"grey": 1, "reflectance+fluorescence": 2, "rgb": 3}[self.kind]


class Normalisation(_Frozen):
    """Per-channel ``(x - mean) / std`` on RGB in [0, 1]."""

    mean: RGB = (0.485, 0.456, 0.406)
    std: RGB = (0.229, 0.224, 0.225)

    @field_validator("std")
    @classmethod
    def _positive(cls, value: RGB) -> RGB:
        if min(value) <= 0:
            raise ValueError(f"std must be positive, got {value}")
        return value


class QualityThresholds(_Frozen):
    """The quality gate's thresholds (engine.quality); None switches a check off.

    ``marginwatch train`` derives them from the training images (a low or high
    percentile of the clean images, with a margin) and writes them here;
    ``derived_from`` says how. Configuration can override each (``engine.quality_*``).
    """

    focus_min: float | None = Field(None, ge=0)
    saturated_fraction_max: float | None = Field(None, ge=0, le=1)
    signal_range_min: float | None = Field(None, ge=0, le=1)
    tissue_fraction_min: float | None = Field(None, ge=0, le=1)
    void_fraction_max: float | None = Field(None, ge=0, le=1)
    seam_score_max: float | None = Field(None, ge=0)
    kept_tissue_share_min: float | None = Field(0.5, ge=0, le=1)
    derived_from: str = ""


class ModelCard(_Frozen):
    """``model.json``. Every field the engine needs to run the weights correctly."""

    format_version: int = FORMAT_VERSION
    architecture: Architecture
    input_size_px: int = Field(896, ge=32, le=8192)
    um_per_px: float = Field(1.0, gt=0)
    device_profile: DeviceProfile = Field(default_factory=DeviceProfile)
    normalisation: Normalisation = Field(default_factory=Normalisation)
    class_names: tuple[str, str] = ("no tumour at margin", "tumour at margin")
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    temperature: float = Field(1.0, gt=0)
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    weights_dtype: Literal["float32", "float16"] = "float32"
    training_data_sha256: str | None = None
    metrics: dict[str, float | None] = Field(default_factory=dict)
    input_reference: dict[str, Any] | None = Field(
        None, description="training-centre image summary for input-drift monitoring "
        "(marginwatch.tools.monitoring.reference_from_features)"
    )
    quality: QualityThresholds | None = Field(
        None, description="quality-gate thresholds; None: the engine's shipped defaults"
    )
    synthetic_demo: bool = False
    description: str = ""
    created_utc: str | None = None

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != FORMAT_VERSION:
            raise ValueError(f"format_version {value} is not supported (expected {FORMAT_VERSION})")
        return value

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"


def read_card(folder: str | Path) -> ModelCard:
    """Parse ``folder/model.json``; errors name the file and the field."""
    path = Path(folder) / CARD_FILENAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelError(f"{folder}: no {CARD_FILENAME}; expected a model folder") from exc
    except IsADirectoryError as exc:
        raise ModelCardError(f"{path}: is a directory; expected a JSON file") from exc
    except OSError as exc:
        raise ModelError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelCardError(f"{path}: not valid JSON: {exc}") from exc
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'card'}: {e['msg']}" for e in exc.errors()
        )
        raise ModelCardError(f"{path}: invalid model card: {problems}") from exc

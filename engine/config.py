"""The one typed configuration of marginwatch.

A TOML file (``--config FILE`` or ``MARGINWATCH_CONFIG``) with four sections,
``[engine]``, ``[daemon]``, ``[dashboard]`` and ``[cases]`` (margin locations); every
field has a default and carries its unit in its name. Any field can be overridden from
the environment as ``MARGINWATCH_<SECTION>__<FIELD>`` (for example
``MARGINWATCH_DAEMON__SETTLE_SECONDS=2``; pydantic-settings' ``env_nested_delimiter``
reads them; a list is comma-separated).

Validation happens once, in :func:`load_config`; a bad value raises
:class:`~marginwatch.engine.errors.ConfigError` naming the file (or variable), the
field, the value received and what was expected.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from ._cases_config import DEFAULT_LOCATIONS, UNSPECIFIED, CasesConfig
from .errors import ConfigError

__all__ = [
    "DEFAULT_LOCATIONS",
    "UNSPECIFIED",
    "CasesConfig",
    "Config",
    "DaemonConfig",
    "DashboardConfig",
    "EngineConfig",
    "ENV_PREFIX",
    "load_config",
]

ENV_PREFIX = "MARGINWATCH_"

Backend = Literal["auto", "torch-cpu", "torch-cuda", "tensorrt"]
Aggregation = Literal["max", "mean", "noisy-or", "top3-mean"]
Profile = Literal["grey", "reflectance+fluorescence", "rgb"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class EngineConfig(_Section):
    """How an image becomes a decision."""

    backend: Backend = "auto"
    precision: Literal["fp16", "fp32"] = "fp16"
    max_pixels: int = Field(30_000 * 30_000, gt=0, description="declared W*H above this is refused")
    region_read_min_pixels: int = Field(
        4096 * 4096, gt=0, description="images at least this large are read region by region"
    )
    max_channels: int = Field(4, ge=1, le=4)
    tile_overlap_fraction: float = Field(0.0, ge=0.0, lt=0.9)
    min_tissue_fraction: float = Field(0.05, ge=0.0, le=1.0)
    aggregation: Aggregation = "max"
    batch_size: int = Field(8, ge=1, le=1024)
    default_profile: Profile | None = Field(
        None, description="device profile when the model card's profile is not to be used"
    )
    default_um_per_px: float | None = Field(
        None, gt=0, description="pixel size when the file carries none (else the profile's)"
    )
    heatmap_max_side_px: int = Field(512, ge=16, le=8192)
    engine_cache_dir: Path | None = None
    tensorrt_max_batch: int = Field(
        32, ge=1, le=1024, description="TensorRT optimisation profile: batch 1..this many tiles"
    )
    tensorrt_workspace_mib: int = Field(
        2048, ge=64, description="TensorRT builder workspace memory limit"
    )
    # quality gate (engine.quality): None keeps the model card's threshold (or the
    # shipped default when the card has none)
    quality_focus_min: float | None = Field(None, ge=0)
    quality_saturated_fraction_max: float | None = Field(None, ge=0, le=1)
    quality_signal_range_min: float | None = Field(None, ge=0, le=1)
    quality_tissue_fraction_min: float | None = Field(None, ge=0, le=1)
    quality_void_fraction_max: float | None = Field(None, ge=0, le=1)
    quality_seam_score_max: float | None = Field(None, ge=0)
    quality_kept_tissue_share_min: float | None = Field(None, ge=0, le=1)

    def quality_overrides(self) -> dict[str, float | None]:
        """``{threshold field: value}`` for the ``quality_*`` settings (None: not set)."""
        prefix = "quality_"
        return {
            name[len(prefix) :]: getattr(self, name)
            for name in type(self).model_fields
            if name.startswith(prefix)
        }


class DaemonConfig(_Section):
    """How the service watches, queues and records."""

    watch_dir: Path | None = None
    state_dir: Path = Path("/var/lib/marginwatch")
    db_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite in state_dir")
    model_dir: Path | None = None
    observer: Literal["inotify", "polling", "none"] = Field(
        "inotify", description="polling for SMB/NFS shares; none: reconcile scans only"
    )
    poll_interval_seconds: float = Field(1.0, gt=0)
    settle_seconds: float = Field(
        0.0, ge=0, description="extra wait after a file stops changing; readiness is by format"
    )
    stable_polls: int = Field(2, ge=1)
    rescan_seconds: float = Field(60.0, gt=0)
    ignore_globs: list[str] = Field(
        default_factory=lambda: ["*.tmp", "*.part", "*.partial", "*.crdownload", "*~", ".*"]
    )
    image_globs: list[str] = Field(
        default_factory=lambda: ["*.tif", "*.tiff", "*.png", "*.jpg", "*.jpeg", "*.bmp"]
    )
    max_attempts: int = Field(3, ge=1)
    retry_delay_seconds: float = Field(5.0, ge=0)
    lease_seconds: float = Field(120.0, gt=0)
    workers: int = Field(1, ge=1, le=64)
    inference_threads: int = Field(
        0, ge=0, le=256, description="torch CPU threads of the inference; 0: OMP_NUM_THREADS "
        "when set, else the CPUs left after the readers (workers), at least 1"
    )
    max_batch_tiles: int = Field(16, ge=1)
    max_batch_wait_ms: float = Field(50.0, ge=0)
    shutdown_seconds: float = Field(20.0, gt=0)
    heartbeat_seconds: float = Field(2.0, gt=0)
    drift_check_seconds: float = Field(
        600.0, ge=0, description="how often the daemon tests its recent images for input "
        "drift and raises the alarm (docs/monitoring.md); 0: never"
    )
    db_busy_timeout_seconds: float = Field(
        10.0, ge=0, description="how long an SQLite writer waits for the lock before giving up"
    )
    anchor_file: Path | None = Field(
        None, description="where the daemon keeps the audit chain's head (the anchor); "
        "default: beside the SQLite file (<db>.anchor.json), else state_dir/audit-anchor.json"
    )
    anchor_every_events: int = Field(
        20, ge=1, description="rewrite the anchor after this many new audit events (and at stop)"
    )

    def resolved_db_url(self) -> str:
        """The database URL: ``db_url``, else an SQLite file in ``state_dir``."""
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.state_dir / 'marginwatch.db').resolve()}"


class DashboardConfig(_Section):
    """How the theatre console looks."""

    refresh_per_second: float = Field(2.0, gt=0, le=30)
    recent_rows: int = Field(10, ge=1, le=200)
    bell: bool = True
    # The live console lowers its own CPU priority by this much (nice), so that where the
    # daemon and the console share a few cores, inference comes first; 0 keeps it.
    nice: int = Field(5, ge=0, le=19)


class Config(_Section):
    """The whole configuration; ``source`` says where it came from."""

    engine: EngineConfig = Field(default_factory=EngineConfig)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    cases: CasesConfig = Field(default_factory=CasesConfig)
    source: str = Field("defaults", exclude=True)

    @model_validator(mode="after")
    def _check(self) -> Config:
        if self.engine.region_read_min_pixels > self.engine.max_pixels:
            raise ValueError(
                f"engine.region_read_min_pixels={self.engine.region_read_min_pixels} "
                f"must not exceed engine.max_pixels={self.engine.max_pixels}"
            )
        return self


_SECTIONS: dict[str, type[BaseModel]] = {
    "engine": EngineConfig,
    "daemon": DaemonConfig,
    "dashboard": DashboardConfig,
    "cases": CasesConfig,
}


def _format_validation(err: ValidationError, where: str, given: Mapping[str, Any]) -> str:
    lines = []
    for item in err.errors():
        loc = ".".join(str(part) for part in item["loc"])
        value = _lookup(given, item["loc"])
        shown = "<missing>" if value is _MISSING else repr(value)
        lines.append(f"{where}: {loc or 'config'}: got {shown}; expected {item['msg'].lower()}")
    return "\n".join(lines)


_MISSING = object()


def _lookup(data: Mapping[str, Any], loc: tuple[Any, ...]) -> Any:
    node: Any = data
    for part in loc:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return _MISSING
    return node


class _EnvironmentBase(BaseSettings):
    """Where pydantic-settings looks: ``MARGINWATCH_<SECTION>__<FIELD>``, section and field
    in any case.

    Values stay raw strings here; :class:`Config` validates them with the file's values,
    so a bad variable gets the same message as a bad TOML value.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", case_sensitive=False
    )


#: one ``dict`` field per configuration section
_Environment = create_model(
    "_Environment",
    __base__=_EnvironmentBase,
    **{section: (dict[str, Any], Field(default_factory=dict)) for section in _SECTIONS},
)


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``MARGINWATCH_SECTION__FIELD=value`` -> ``{section: {field: value}}``, and the names used."""
    names = {key.lower(): key for key in environ if key.startswith(ENV_PREFIX) and "__" in key}
    for lowered, key in names.items():
        section = lowered[len(ENV_PREFIX) :].partition("__")[0]
        if section not in _SECTIONS:
            raise ConfigError(
                f"environment variable {key}: unknown section {section!r}; "
                f"expected one of {sorted(_SECTIONS)}"
            )
    source = EnvSettingsSource(_Environment)
    lowered_environ = {lowered: environ[key] for lowered, key in names.items()}
    out: dict[str, dict[str, Any]] = {}
    for section, model in _SECTIONS.items():
        fields = source.explode_env_vars(section, _Environment.model_fields[section],
                                         lowered_environ)
        for field, value in fields.items():
            if field not in model.model_fields or isinstance(value, dict):  # a__b: nested
                base = f"{ENV_PREFIX.lower()}{section}__{field}"
                key = next(k for low, k in names.items() if low.split("__")[:2] == base.split("__"))
                shown = key[len(ENV_PREFIX) :].lower().partition("__")[2]
                raise ConfigError(
                    f"environment variable {key}: unknown field {section}.{shown}; "
                    f"expected one of {sorted(model.model_fields)}"
                )
            if str(model.model_fields[field].annotation).startswith("list"):
                value = [part.strip() for part in value.split(",") if part.strip()]
            out.setdefault(section, {})[field] = value
    return out, list(names.values())


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Read, merge and validate the configuration.

    Precedence, lowest first: defaults, the TOML file (``path``, else
    ``$MARGINWATCH_CONFIG``), ``MARGINWATCH_<SECTION>__<FIELD>`` variables, then
    ``overrides`` (command-line options).
    """
    env = os.environ if environ is None else environ
    data: dict[str, dict[str, Any]] = {}
    where = "defaults"
    if path is None and env.get("MARGINWATCH_CONFIG"):
        path = env["MARGINWATCH_CONFIG"]
    if path is not None:
        file = Path(path)
        where = str(file)
        try:
            with file.open("rb") as fh:
                loaded = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"{file}: configuration file not found") from exc
        except IsADirectoryError as exc:
            raise ConfigError(f"{file}: is a directory; expected a TOML file") from exc
        except PermissionError as exc:
            raise ConfigError(f"{file}: permission denied reading the configuration") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
        for key, value in loaded.items():
            if key not in _SECTIONS:
                raise ConfigError(
                    f"{file}: unknown section [{key}]; expected one of {sorted(_SECTIONS)}"
                )
            if not isinstance(value, dict):
                raise ConfigError(f"{file}: {key} must be a table ([{key}]), got {value!r}")
            data[key] = dict(value)
    env_data, env_names = _env_overrides(env)
    for section, fields in env_data.items():
        data.setdefault(section, {}).update(fields)
    for section, fields in (overrides or {}).items():
        data.setdefault(section, {}).update({k: v for k, v in fields.items() if v is not None})
    if env_names:
        where = f"{where} + environment ({', '.join(sorted(env_names))})"
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, where, data)) from exc
    config.source = where
    return config

"""The one exception tree of marginwatch.

Every error the product raises on purpose derives from :class:`MarginwatchError`.
Errors from tifffile, Pillow, torch, TensorRT, SQLite and the file system are
translated at the boundary with ``raise ... from exc`` so that callers (the CLI, the
daemon's workers) catch one family and print one clear line.

This module imports nothing heavy: storage and the CLI import it without torch.

    MarginwatchError
    ├── ConfigError                 a setting is missing, malformed or out of range
    ├── InputError                  an image cannot be assessed as given
    │   ├── UnreadableImageError    not an image, zero bytes, truncated or corrupt
    │   ├── ImageTooLargeError      declared pixels exceed max_pixels
    │   ├── NoTissueError           decoded, but no tile holds enough tissue to assess
    │   ├── InvalidPixelsError      decoded, but NaN/inf, constant or far out of range
    │   ├── QualityGateError        decoded, but the scan fails the quality gate
    │   └── UnsupportedImageError   dtype, channel count or layout not handled
    ├── ModelError                  a model artefact is missing or inconsistent
    │   └── ModelCardError          model.json invalid or disagrees with the weights
    ├── BackendError                an inference backend is unavailable or failed
    │   └── EngineBuildError        a TensorRT engine could not be built (log attached)
    ├── StorageError                the database cannot be used as asked
    │   ├── DatabaseUnavailableError  not a database, locked, read-only, missing
    │   ├── SchemaVersionError      the schema is newer (or older) than this code
    │   ├── NotFoundError           an id names no row
    │   ├── ConflictError           the change conflicts with the recorded state
    │   └── AuditChainError         the audit hash chain is broken
    ├── ManifestError               a training/evaluation manifest is unusable
    ├── DaemonError                 the service cannot start or keep running
    └── DeploymentError             install-systemd cannot install as asked
"""

from __future__ import annotations

__all__ = [
    "AuditChainError",
    "BackendError",
    "ConfigError",
    "ConflictError",
    "DaemonError",
    "DeploymentError",
    "DatabaseUnavailableError",
    "EngineBuildError",
    "ImageTooLargeError",
    "InputError",
    "InvalidPixelsError",
    "ManifestError",
    "MarginwatchError",
    "ModelCardError",
    "ModelError",
    "NoTissueError",
    "QualityGateError",
    "NotFoundError",
    "SchemaVersionError",
    "StorageError",
    "UnreadableImageError",
    "UnsupportedImageError",
]


class MarginwatchError(Exception):
    """Root of every error marginwatch raises on purpose."""


class ConfigError(MarginwatchError):
    """A configuration value is missing, malformed or out of range."""


class InputError(MarginwatchError):
    """An input image cannot be assessed as given."""


class UnreadableImageError(InputError):
    """Not an image, zero bytes, truncated or corrupt."""


class ImageTooLargeError(InputError):
    """The declared pixel count exceeds ``max_pixels``; nothing was decoded."""


class NoTissueError(InputError):
    """The image was read but no tile holds enough tissue: not assessed (never "negative")."""


class InvalidPixelsError(InputError):
    """Decoded, but the pixels are no measurement (NaN/inf, constant, far out of range)."""


class QualityGateError(InputError):
    """Not assessable: out of focus, saturated, faint, voids, seams or too little tissue.

    ``report`` is the engine's ``QualityReport`` (every measurement, value against
    threshold); the message names each failed check, e.g. ``out of focus: focus 12.3 <
    40.0``.
    """

    def __init__(self, message: str, report: object = None) -> None:
        super().__init__(message)
        self.report = report


class UnsupportedImageError(InputError):
    """The dtype, channel count or layout is not one marginwatch handles."""


class ModelError(MarginwatchError):
    """A model artefact is missing, unreadable or inconsistent."""


class ModelCardError(ModelError):
    """model.json is invalid or disagrees with the weights."""


class BackendError(MarginwatchError):
    """An inference backend is unavailable or failed."""


class EngineBuildError(BackendError):
    """A TensorRT engine could not be built; ``log`` holds TensorRT's messages."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message if not log else f"{message}\n--- TensorRT log ---\n{log}")
        self.log = log


class StorageError(MarginwatchError):
    """The database cannot be used as asked."""


class DatabaseUnavailableError(StorageError):
    """The database file is not a database, is locked, read-only or missing."""


class SchemaVersionError(StorageError):
    """The database schema is not the one this code expects."""


class NotFoundError(StorageError):
    """An id names no row."""


class ConflictError(StorageError):
    """The requested change conflicts with the recorded state."""


class AuditChainError(StorageError):
    """The audit hash chain is broken."""


class ManifestError(MarginwatchError):
    """A training or evaluation manifest is unusable."""


class DaemonError(MarginwatchError):
    """The service cannot start or keep running."""


class DeploymentError(MarginwatchError):
    """``install-systemd`` cannot install as asked (not root, no systemd, bad option)."""

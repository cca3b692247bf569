"""How the pipeline describes a failed job: error class, advice a person can act on, retry.

:func:`describe_failure` turns an exception into ``(error_class, message, retryable)``
for ``fail_job`` (``_ADVICE``: what to do, per error class); :func:`gate_measurements`
is the quality gate's report for the audit trail; :func:`still_changing` tells a file
being written from a failing one. The pipeline's own file errors
(:class:`RefusedFileError`, :class:`FileChangedError`) are defined here with their advice.

Split out of :mod:`.pipeline`, which re-exports these names.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from marginwatch.engine.errors import (
    BackendError,
    ImageTooLargeError,
    InputError,
    InvalidPixelsError,
    MarginwatchError,
    QualityGateError,
    UnreadableImageError,
    UnsupportedImageError,
)
from marginwatch.engine.pathnames import display_path

if TYPE_CHECKING:
    from marginwatch.storage.records import ClaimedJob

__all__ = ["FileChangedError", "RefusedFileError", "describe_failure", "gate_measurements",
           "still_changing"]


class RefusedFileError(InputError):
    """The path is not something the daemon will open (a link out, not a regular file)."""


class FileChangedError(InputError):
    """The file is not the version recorded (size or mtime differ): a newer version."""


_ADVICE: list[tuple[type[BaseException], str, bool]] = [
    # (error class, what a person can do, retry?)
    (RefusedFileError, "copy the image into the export folder instead of linking to it", False),
    (FileChangedError, "nothing to do: the newer version is recorded and assessed on its own",
     False),
    (ImageTooLargeError, "export a smaller field of view, or raise engine.max_pixels", False),
    (UnsupportedImageError, "export a grey, two-channel or RGB TIFF/PNG from the scanner", False),
    (QualityGateError, "rescan: specimen flat on the window, stain, no air bubbles", False),
    (UnreadableImageError, "re-export the image from the scanner", True),
    (InvalidPixelsError, "check the scanner's export settings; these pixel values are not "
     "a usable image", False),
    (InputError, "re-export the image from the scanner", False),
    # retried: a file renamed away is followed once its new name is recorded
    (FileNotFoundError, "the file was removed or renamed before it could be read", True),
    (PermissionError, "give the marginwatch service user read access to the export folder", True),
    (OSError, "check the export share (network or disk error while reading)", True),
    (BackendError, "check the inference device (see the daemon log)", True),
]


def gate_measurements(exc: BaseException) -> dict[str, Any] | None:
    """The quality gate's full report (every check: value, threshold, which way is bad)
    of an image it stopped, for the audit trail; None for any other failure."""
    report = getattr(exc, "report", None) if isinstance(exc, QualityGateError) else None
    return None if report is None else report.to_dict()


def describe_failure(exc: BaseException, abs_path: str, rel_path: str) -> tuple[str, str, bool]:
    """``(error_class, message, retryable)``; the message never carries the absolute path."""
    advice, retry = "internal error; see the daemon log and report it", True
    # The engine wraps OS errors (EACCES: "re-export" would not help); advise on the cause.
    cause = exc.__cause__
    judged = cause if isinstance(exc, InputError) and isinstance(cause, OSError) else exc
    for cls, cls_advice, cls_retry in _ADVICE:
        if isinstance(judged, cls):
            advice, retry = cls_advice, cls_retry
            break
    if isinstance(exc, OSError) and not isinstance(exc, MarginwatchError):
        what = exc.strerror or type(exc).__name__
        text = f"{rel_path}: cannot read the file ({what})"
    else:
        text = str(exc).replace(abs_path, rel_path) or type(exc).__name__
    # Any bytes, newlines or escapes in a name: one printable line.
    return type(exc).__name__, display_path(f"{text}; {advice}"), retry


def still_changing(root_real: str, job: ClaimedJob) -> bool:
    """Whether the file's size or mtime moved since it was recorded (it is being written
    or rewritten); False when it cannot be stat'ed (gone: judged as such elsewhere)."""
    try:
        st = os.lstat(os.path.join(root_real, job.rel_path))
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) != (job.size, job.mtime_ns)

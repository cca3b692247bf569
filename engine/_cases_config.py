"""The ``[cases]`` configuration section: margin locations and case lifecycle.

Kept beside :mod:`.config`, which imports it as one of its sections. The default
vocabulary is the radical-prostatectomy specimen's faces; the default file-name
pattern reads the usual abbreviations (``case7/LPL_01.tif`` -> left-posterolateral).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "DEFAULT_ABBREVIATIONS",
    "DEFAULT_FILENAME_PATTERN",
    "DEFAULT_LOCATIONS",
    "UNSPECIFIED",
    "CasesConfig",
]

UNSPECIFIED = "unspecified"
DEFAULT_LOCATIONS = (
    "apex",
    "base",  # the base / bladder neck
    "left-posterolateral",
    "right-posterolateral",
    "left-anterolateral",
    "right-anterolateral",
    "anterior",
    "posterior",
)
DEFAULT_ABBREVIATIONS = {
    "APEX": "apex",
    "BASE": "base",
    "BN": "base",
    "LPL": "left-posterolateral",
    "RPL": "right-posterolateral",
    "LAL": "left-anterolateral",
    "RAL": "right-anterolateral",
    "ANT": "anterior",
    "POST": "posterior",
}
#: a token of the file name's stem, delimited by start/end, "_", "-", "." or a space (no
#: "$": the configuration template is a string.Template).
DEFAULT_FILENAME_PATTERN = (
    r"(?i)(?:^|[_\-. ])(?P<location>LPL|RPL|LAL|RAL|APEX|BASE|BN|ANT|POST)(?![^_\-. ])"
)
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,59}$")


class CasesConfig(BaseModel):
    """Cases (the first folder under the export root) and their margin locations."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    locations: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LOCATIONS),
        description="canonical location names (lower case, a-z 0-9 -); 'unspecified' is implicit",
    )
    filename_pattern: str | None = Field(
        DEFAULT_FILENAME_PATTERN,
        description="regex searched in the file name's stem, with a named group `location`",
    )
    abbreviations: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_ABBREVIATIONS),
        description="what the file name (or a sidecar) may say -> canonical location",
    )
    idle_close_seconds: float = Field(
        4 * 3600.0, gt=0, description="an open case with no new image for this long is closed"
    )
    display: Literal["folder", "id"] = Field(
        "folder", description="dashboard/report label: the case folder name, or its opaque id"
    )

    @field_validator("locations")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _NAME.match(name) or name == UNSPECIFIED:
                raise ValueError(
                    f"location {name!r}: expected lower-case a-z, 0-9 and '-' (not "
                    f"{UNSPECIFIED!r}, which is implicit)"
                )
        if len(set(value)) != len(value) or not value:
            raise ValueError("locations must be a non-empty list without repeats")
        return value

    @field_validator("filename_pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc})") from exc
        if "location" not in compiled.groupindex:
            raise ValueError("a regular expression with a named group (?P<location>...)")
        return value

    @model_validator(mode="after")
    def _mapped_names_exist(self) -> CasesConfig:
        unknown = {k: v for k, v in self.abbreviations.items() if v not in self.locations}
        if unknown:
            raise ValueError(
                f"cases.abbreviations map to names not in cases.locations: {unknown}; "
                f"expected one of {self.locations}"
            )
        return self

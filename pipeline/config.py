"""YAML run configs: a ``predict:`` (and later ``train:``) section of options; unknown keys are errors."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import yaml

from tiling.errors import OptionError

SECTIONS = ("predict", "train")


def load_config(path: str | os.PathLike[str], section: str, known: list[str]) -> dict[str, Any]:
    """The ``section`` of the config at ``path``, checked against the ``known`` option names."""
    p = Path(path)
    if not p.is_file():
        raise OptionError(f"config {p} does not exist")
    try:
        document = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise OptionError(f"config {p} is not valid YAML{where}") from None
    if not isinstance(document, dict):
        raise OptionError(f"config {p} must be a mapping with {' and/or '.join(SECTIONS)} sections")
    for key in document:
        if key not in SECTIONS:
            raise OptionError(f"unknown key {key!r} in config {p} (expected sections: {', '.join(SECTIONS)})")
    values = document.get(section) or {}
    if not isinstance(values, dict):
        raise OptionError(f"section {section!r} of config {p} must be a mapping")
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise OptionError(f"unknown key {key!r} in the {section} section of config {p}{hint}")
    if "bands" in values and isinstance(values["bands"], list):
        values["bands"] = tuple(values["bands"])
    return values

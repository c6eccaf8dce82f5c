"""Outputs appear only when complete: everything is written to ``NAME.partial`` and renamed at the end."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from ..errors import OutputError, option

PARTIAL_SUFFIX = ".partial"


def partial_path(final: Path) -> Path:
    return final.with_name(final.name + PARTIAL_SUFFIX)


def check_destination(final: Path, overwrite: bool) -> None:
    """Refuse an existing output (unless ``overwrite``) and a folder that is missing or not writable."""
    if final.exists() and not overwrite:
        raise OutputError(f"output {final} already exists (pass {option('overwrite')} to replace it)")
    parent = final.parent
    if not parent.exists():
        raise OutputError(f"output folder {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"output folder {parent} is not a directory")
    probe = parent / f".tilewise-write-test-{uuid.uuid4().hex}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"output folder {parent} is not writable: {exc.strerror or exc}") from None


def honour_umask(path: Path) -> None:
    """Give ``path`` the mode a new file gets under the process's umask (some writers, such as safetensors',
    create their files readable by their owner only)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def commit(partial: Path, final: Path) -> None:
    """Move a finished ``partial`` into place, replacing ``final`` if it exists."""
    if final.is_dir() and not final.is_symlink():
        # os.replace cannot replace a non-empty directory: swap it aside first, then delete it.
        aside = final.with_name(f".{final.name}.replaced-{uuid.uuid4().hex}")
        os.replace(final, aside)
        os.replace(partial, final)
        shutil.rmtree(aside)
    else:
        if final.exists() and partial.is_dir():
            final.unlink()
        os.replace(partial, final)

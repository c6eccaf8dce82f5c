"""Where a run's output goes: its own local path, or a URL of object storage it is uploaded to.

GDAL cannot write a GeoTIFF/COG straight to object storage, and a half-uploaded output must never be visible.
So an output at a URL is assembled in a local scratch folder (``--scratch-dir``, by default the system's
temporary folder; its free space is checked against the plan like any output folder) and uploaded when it is
complete: a file in one request (a multipart upload for a large one), which makes the object appear only once
it is whole. The scratch copy is removed after the upload (and after the products made from it). A Zarr output
is written in place instead when its work store is on the same object store (by default it is, next to the
output): chunk by chunk at the URL, its root metadata last (``in_place_at``). Only a Zarr store whose work store
is elsewhere is assembled in scratch, then uploaded with its root metadata last. Either way a reader finds no
image before every chunk is there, and a Zarr output "exists" when its root metadata does.

An output that is there already (``--overwrite``) stays whole while the run computes, as a local one does: a
file is replaced by the upload, in one request; a Zarr store is written whole into the work store (*staged*)
and copied over the old one when done, the old root metadata removed first. A failure while it is copied
leaves no image at the URL (no root metadata), and the finished work store for ``--resume``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import OptionError, OutputError, option
from ..storage import StoragePath, storage_error
from .formats import OutputFormat
from .in_place import ROOT_METADATA, ROOT_NAMES
from .location import StoreLocation, remove_remote_store
from .zarr_store import ZarrStoreFormat


@dataclass(frozen=True)
class Destination:
    """An output's place: ``target`` as the user named it, and for a URL the local ``scratch`` folder the
    output is assembled in before it is uploaded."""

    target: StoragePath
    scratch: Path | None = None

    @classmethod
    def of(cls, output: str | os.PathLike[str], scratch_dir: str | os.PathLike[str] | None = None) -> Destination:
        target = StoragePath.of(output)
        if not target.is_remote:
            return cls(target)
        if target.text.startswith("/vsi"):
            target = StoragePath(target.url)
        base = Path(scratch_dir) if scratch_dir is not None else Path(tempfile.gettempdir())
        if not base.is_dir():
            raise OptionError(f"scratch folder {base} does not exist")
        return cls(target, base / f"tilewise-{uuid.uuid4().hex[:12]}")

    @property
    def is_remote(self) -> bool:
        return self.scratch is not None

    @property
    def assembly_path(self) -> Path:
        """Where the output's format writes it: the output path itself, or its name in the scratch folder."""
        if self.scratch is None:
            return self.target.local
        return self.scratch / self.target.name

    def name_of(self, local: Path) -> Path | str:
        """What the user calls the output the format wrote at ``local``: that path, or its URL."""
        if self.scratch is None:
            return local
        return self.target.sibling(local.name).text if local.parent == self.scratch else str(local)

    def in_place_at(self, fmt: OutputFormat, work: StoreLocation, resume: bool = False) -> StoreLocation:
        """The work store of ``fmt`` at this destination: for a Zarr output on object storage, one that writes
        the output's arrays in place at its URL (when ``work`` is on the same store), or, where an output is
        there already, one staged to replace it when done; else ``work`` itself. ``resume``: an interrupted run's
        store at ``work`` is reopened, staged or not as it was made."""
        if self.scratch is None or not isinstance(fmt, ZarrStoreFormat) or not fmt.in_place_capable:
            return work
        located = work.writing_output_at(self.target.url)
        if located.output is None:
            return located
        fmt.write_in_place(self.target.url)
        if resume and located.exists():
            staged = located.holds_output_keys()
        else:
            staged = self.target.child(ROOT_METADATA).exists()
        return located.staging() if staged else located

    def check(self, fmt: OutputFormat, overwrite: bool) -> None:
        """Refuse an existing output (unless ``overwrite``) and an unusable folder or bucket, before any work."""
        if self.scratch is None:
            fmt.check_destination(overwrite)
            return
        self.check_remote([path.name for path in fmt.paths()], overwrite)

    def check_remote(self, names: list[str], overwrite: bool) -> None:
        """Refuse existing objects ``names`` beside the target (unless ``overwrite``), and a missing bucket."""
        scheme, rest = self.target.url.split("://", 1)
        if scheme in ("http", "https"):
            raise OptionError(f"cannot write to {scheme}:// URLs: give an s3:// (or other object store) URL")
        bucket = StoragePath(f"{scheme}://{rest.split('/', 1)[0]}")
        if not bucket.exists():
            _missing_or_denied(bucket)
        for name in names:
            target = self.target.sibling(name)
            # A Zarr store is there (whole) once its root metadata is.
            probe = target.child(ROOT_METADATA) if name.endswith(".zarr") else target
            if probe.exists() and not overwrite:
                raise OutputError(f"output {target} already exists (pass {option('overwrite')} to replace it)")

    def publish(self, paths: list[Path], overwrite: bool = True) -> None:
        """Upload the finished ``paths`` (files or Zarr folders in the scratch folder) to their URLs."""
        if self.scratch is None:
            return
        for path in paths:
            target = self.target.sibling(path.name)
            fs, remote = target.filesystem()
            try:
                if path.is_dir():
                    remove_remote_store(fs, remote)
                    _upload_store(fs, path, remote)
                else:
                    fs.put_file(str(path), remote)
                fs.invalidate_cache(remote)
            except Exception as exc:
                raise storage_error(exc, f"uploading {target}") from None

    def discard(self) -> None:
        """Remove the scratch folder (nothing of the upload is left either: it was one request per file)."""
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _upload_store(fs: object, local: Path, remote: str) -> None:
    """A Zarr folder uploaded with its root metadata last (then a reader sees the image only when complete)."""
    files = sorted(p for p in local.rglob("*") if p.is_file())
    last = [p for p in files if p.parent == local and p.name in ROOT_NAMES]
    first = [p for p in files if p not in last]
    for batch in (first, last):
        if batch:
            fs.put(  # type: ignore[attr-defined]
                [str(p) for p in batch], [f"{remote}/{p.relative_to(local).as_posix()}" for p in batch]
            )


def _missing_or_denied(bucket: StoragePath) -> None:
    """Why ``bucket`` was not found: missing, or its probes were refused (s3fs takes any refusal for a missing
    bucket). A listing tells the two apart; one that succeeds means the bucket is there after all."""
    fs, path = bucket.filesystem()
    try:
        fs.ls(path, detail=False)
    except FileNotFoundError:
        raise OutputError(f"output bucket {bucket} does not exist") from None
    except Exception as exc:
        raise storage_error(exc, f"output bucket {bucket}") from None

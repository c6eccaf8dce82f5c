"""How much a run writes, where, and whether it fits: checked before the first tile and named when a write fails.

Each format states what it writes at its peak, folder by folder (``DiskNeed``): the work store, and what its
assembly writes beside the output (a COG's level-0 intermediate and the COG itself, an OME-TIFF). Two bounds
frame each need: ``upper`` if nothing compresses (what a run of noise would write), ``lower`` if everything
compresses as well as the codecs can (deflate at most about 1032:1; a Zarr chunk file never shrinks below its
headers). A run whose lower bound does not fit the free space is refused; one whose upper bound does not fit
gets a warning.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: Deflate's best possible compression ratio (a run of one byte value).
DEFLATE_MAX_RATIO = 1032
#: Smallest compressed Zarr chunk file (blosc's and zstd's headers).
MIN_CHUNK_FILE = 32
#: Metadata, directories and TIFF headers beside the pixels, per folder.
OVERHEAD = 256 * 2**10


@dataclass(frozen=True)
class DiskNeed:
    """Bytes written in ``folder`` at the run's peak: at most ``upper``, at least ``lower``."""

    folder: Path
    upper: int
    lower: int
    what: str


@dataclass(frozen=True)
class DiskCheck:
    """The needs of a run summed per filesystem, against its free space."""

    device_folder: Path
    upper: int
    lower: int
    free: int
    what: tuple[str, ...]

    @property
    def fits(self) -> bool:
        return self.upper <= self.free

    @property
    def cannot_fit(self) -> bool:
        return self.lower > self.free

    def describe(self) -> str:
        return (
            f"{' and '.join(self.what)} in {self.device_folder}: up to {mib(self.upper)} uncompressed, "
            f"at least {mib(self.lower)}; {mib(self.free)} free there"
        )


def mib(n: int | float) -> str:
    if n >= 2**30:
        return f"{n / 2**30:,.1f} GiB"
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 2**10:,.0f} KiB"


def existing_folder(path: Path) -> Path:
    """``path`` or its nearest existing parent (where a folder about to be made will live)."""
    path = path.absolute()
    return next(p for p in (path, *path.parents) if p.exists())


def check_needs(needs: Iterable[DiskNeed], already_written: dict[Path, int] | None = None) -> list[DiskCheck]:
    """The needs grouped by the filesystem they land on, each against its free space. ``already_written``
    (bytes per folder, e.g. the work store of a resumed run) is taken off the need of that folder."""
    written = already_written or {}
    groups: dict[int, list[DiskNeed]] = {}
    folders: dict[int, Path] = {}
    for need in needs:
        folder = existing_folder(need.folder)
        device = os.stat(folder).st_dev
        groups.setdefault(device, []).append(need)
        folders.setdefault(device, folder)
    checks = []
    for device, members in groups.items():
        done = sum(written.get(n.folder, 0) for n in members)
        upper = max(0, sum(n.upper for n in members) - done)
        lower = max(0, sum(n.lower for n in members) - done)
        free = shutil.disk_usage(folders[device]).free
        what = tuple(dict.fromkeys(n.what for n in members))
        checks.append(DiskCheck(folders[device], upper, lower, free, what))
    return checks


def folder_size(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total

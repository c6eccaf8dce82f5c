"""How a remote TIFF is read through fsspec: small reads (tags, directories) come from one request of a block,
large ones (tiles) are fetched exactly, and kept a while for the next chunk.

fsspec's read-ahead cache adds a block to every read that misses it: a slide's many small tag reads come from one
request, but each tile read then fetches a block more than the tile (a 64 KiB block on 30 KiB JPEG tiles tripled
the bytes fetched). Without a cache every tag read is a request of its own (hundreds per open).

A chunk reads its window with a halo that enters its neighbours' tiles, which their own chunks fetch again (a
local file has the page cache for that). So the tile reads of a process are kept in one least-recently-used cache
of ``TILE_CACHE_BYTES`` shared by its handles (``TileCache``): a read inside a range fetched before is served
from memory. A window's tiles are fetched into it together, concurrently (``prefetch``), before tifffile reads
them one by one. (GDAL's own cache of fetched ranges, ``CPL_VSIL_CURL_CACHE_SIZE``, does not help a COG: its
driver reads a window's blocks with one multi-range request, which bypasses that cache; see benchmarks/README.)
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict

import fsspec.caching

#: Reads at least this long (tile data) are fetched as they are; shorter ones (tags, directories) read ahead.
EXACT_FROM = 4096
#: The bytes of fetched tiles a process keeps (a row of 2048² chunks of an RGB slide is ~30 MiB of JPEG tiles).
TILE_CACHE_BYTES = 128 * 2**20
#: How many ranges before a read's start are checked for one that holds it (merged reads overlap a little).
LOOK_BACK = 4


class TileCache:
    """Byte ranges of remote files, the least recently used dropped past ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        self.budget, self.held = budget, 0
        self._ranges: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._starts: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def get(self, file: str, start: int, end: int) -> bytes | None:
        with self._lock:
            starts = self._starts.get(file, [])
            at = bisect.bisect_right(starts, start)
            for begin in reversed(starts[max(0, at - LOOK_BACK) : at]):
                data = self._ranges[(file, begin)]
                if end <= begin + len(data):
                    self._ranges.move_to_end((file, begin))
                    return data[start - begin : end - begin]
        return None

    def put(self, file: str, start: int, data: bytes) -> None:
        if len(data) > self.budget:
            return
        with self._lock:
            old = self._ranges.pop((file, start), None)
            if old is None:
                bisect.insort(self._starts.setdefault(file, []), start)
            else:
                self.held -= len(old)
            self._ranges[(file, start)] = data
            self.held += len(data)
            while self.held > self.budget:
                (name, begin), dropped = self._ranges.popitem(last=False)
                self.held -= len(dropped)
                starts = self._starts[name]
                del starts[bisect.bisect_left(starts, begin)]


TILES = TileCache(TILE_CACHE_BYTES)


def _file_key(fetcher: object, size: int) -> str | None:
    """The fetched file's name and version (ETag, else size), or None when the fetcher does not say."""
    handle = getattr(fetcher, "__self__", None)
    path = getattr(handle, "path", None)
    if path is None:
        return None
    details = getattr(handle, "details", None) or {}
    version = details.get("ETag") or details.get("etag") or size
    return f"{type(getattr(handle, 'fs', None)).__name__}:{path}@{version}"


class SmallReadAheadCache(fsspec.caching.ReadAheadCache):
    """Read-ahead for reads shorter than ``EXACT_FROM``; longer ones fetched exactly (unless already cached,
    here or in ``TILES``)."""

    name = "tilewise-small-readahead"

    def _fetch(self, start: int | None, end: int | None) -> bytes:
        start = 0 if start is None else start
        end = self.size if end is None or end > self.size else end
        if start >= end or end - start < EXACT_FROM or (start >= self.start and end <= self.end):
            return super()._fetch(start, end)
        file = _file_key(self.fetcher, self.size)
        kept = None if file is None else TILES.get(file, start, end)
        if kept is not None:
            self.hit_count += 1
            return kept
        self.miss_count += 1
        self.total_requested_bytes += end - start
        data: bytes = self.fetcher(start, end)
        if file is not None:
            TILES.put(file, start, data)
        return data


def prefetch(file: object, ranges: list[tuple[int, int]]) -> None:
    """Fetch the byte ``ranges`` (start, end) of the fsspec ``file`` that ``TILES`` lacks into ``TILES``, ranges
    that (nearly) touch in one request, the requests concurrently: the tiles of a window then decode from memory
    instead of one request after another."""
    fetch_range = getattr(file, "_fetch_range", None)
    key = _file_key(fetch_range, int(getattr(file, "size", 0) or 0)) if fetch_range else None
    fs, path = getattr(file, "fs", None), getattr(file, "path", None)
    if key is None or fs is None or path is None:
        return
    missing = [(a, b) for a, b in ranges if b - a >= EXACT_FROM and TILES.get(key, a, b) is None]
    if len(missing) < 2:
        return  # one request either way
    requests = merged(missing, EXACT_FROM)
    fetched = fs.cat_ranges([path] * len(requests), [a for a, _ in requests], [b for _, b in requests])
    for (start, _), data in zip(requests, fetched, strict=True):
        if isinstance(data, bytes):  # an error is left for the read itself to raise
            TILES.put(key, start, data)


def merged(ranges: list[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    """``ranges`` (start, end) sorted, those less than ``gap`` bytes apart joined (a tile row of a TIFF is
    most often one run of bytes)."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1] + gap:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


if SmallReadAheadCache.name not in fsspec.caching.caches:
    fsspec.caching.register_cache(SmallReadAheadCache)

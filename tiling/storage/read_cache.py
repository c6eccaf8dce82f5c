"""How a remote TIFF is read through fsspec: small reads (tags, directories) come from one request of a block,
large ones (tiles) are fetched exactly.

fsspec's read-ahead cache adds a block to every read that misses it: a slide's many small tag reads come from one
request, but each tile read then fetches a block more than the tile (a 64 KiB block on 30 KiB JPEG tiles tripled
the bytes fetched). Without a cache every tag read is a request of its own (hundreds per open).
"""

from __future__ import annotations

import fsspec.caching

#: Reads at least this long (tile data) are fetched as they are; shorter ones (tags, directories) read ahead.
EXACT_FROM = 4096


class SmallReadAheadCache(fsspec.caching.ReadAheadCache):
    """Read-ahead for reads shorter than ``EXACT_FROM``; longer ones fetched exactly (unless already cached)."""

    name = "tilewise-small-readahead"

    def _fetch(self, start: int | None, end: int | None) -> bytes:
        start = 0 if start is None else start
        end = self.size if end is None or end > self.size else end
        if start >= end or end - start < EXACT_FROM or (start >= self.start and end <= self.end):
            return super()._fetch(start, end)
        self.miss_count += 1
        self.total_requested_bytes += end - start
        return self.fetcher(start, end)  # type: ignore[no-any-return]


if SmallReadAheadCache.name not in fsspec.caching.caches:
    fsspec.caching.register_cache(SmallReadAheadCache)

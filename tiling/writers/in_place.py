"""A Zarr output on object storage written in place: one Zarr group spread over two stores.

A run writing ``s3://bucket/out.zarr`` keeps its work store as one Zarr group (``WorkStore``), but its keys live
in two places: the output's arrays (every chunk, every pyramid level, the metadata of every array and subgroup)
at the output URL, and what only the run needs — the root metadata (the run record, then the finished output's
attributes), the done flags and the ``_work`` group — at the work store's URL (``OUTPUT.partial``). The chunks
thus cross the network once, written where they stay, and the output's root ``zarr.json``, which makes it an
image, is copied into place last (``StoreLocation.commit_output``): a reader never finds a half-made image.
A run that replaces an output already there (``--overwrite``) cannot write where the old one is without
spoiling it: its store is *staged* instead (``StoreLocation.staged``), whole at the work store's URL, and copied
over the old output (server-side, the old root metadata removed first, the new one copied last) when done.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import FsspecStore, WrapperStore

#: The root metadata document; with the first path segments below, the keys kept at the work store's URL.
ROOT_METADATA = "zarr.json"
#: What makes a folder of keys a Zarr store (v3's root metadata, and v2's): removed first, uploaded last.
ROOT_NAMES = (ROOT_METADATA, ".zgroup", ".zattrs", ".zmetadata")
RUN_ONLY = ("done", "_work")


def is_run_key(key: str) -> bool:
    """Whether ``key`` (or a prefix) belongs to the run, not to the output."""
    return key == ROOT_METADATA or key.split("/", 1)[0] in RUN_ONLY


class InPlaceStore(WrapperStore[Store]):
    """Keys of the output at ``output``; the root metadata, done flags and ``_work`` at ``work``."""

    def __init__(self, output: Store, work: Store) -> None:
        super().__init__(output)
        self._work = work

    @classmethod
    def at(cls, output_url: str, work_url: str, read_only: bool = False) -> InPlaceStore:
        return cls(
            FsspecStore.from_url(output_url, read_only=read_only),
            FsspecStore.from_url(work_url, read_only=read_only),
        )

    def _for(self, key: str) -> Store:
        return self._work if is_run_key(key) else self._store

    def _with_store(self, store: Store) -> InPlaceStore:
        return type(self)(store, self._work)

    def with_read_only(self, read_only: bool = False) -> InPlaceStore:
        return type(self)(self._store.with_read_only(read_only), self._work.with_read_only(read_only))

    async def _open(self) -> None:
        await self._store._open()
        await self._work._open()

    async def _ensure_open(self) -> None:
        await self._store._ensure_open()
        await self._work._ensure_open()

    def __eq__(self, value: object) -> bool:
        return isinstance(value, InPlaceStore) and (self._store, self._work) == (value._store, value._work)

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        return await self._for(key).get(key, prototype, byte_range)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)

    async def exists(self, key: str) -> bool:
        return await self._for(key).exists(key)

    async def set(self, key: str, value: Buffer) -> None:
        await self._for(key).set(key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        await self._for(key).set_if_not_exists(key, value)

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        for key, value in values:
            await self.set(key, value)

    async def delete(self, key: str) -> None:
        await self._for(key).delete(key)

    async def delete_dir(self, prefix: str) -> None:
        if prefix.strip("/"):
            await self._for(prefix).delete_dir(prefix)
        else:
            await self._store.delete_dir(prefix)
            await self._work.delete_dir(prefix)

    async def is_empty(self, prefix: str) -> bool:
        if prefix.strip("/"):
            return await self._for(prefix).is_empty(prefix)
        return await self._store.is_empty(prefix) and await self._work.is_empty(prefix)

    async def clear(self) -> None:
        await self._store.clear()
        await self._work.clear()

    def list(self) -> AsyncIterator[str]:
        return self._merged(self._store.list(), self._work.list())

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        if prefix.strip("/"):
            return self._for(prefix).list_prefix(prefix)
        return self._merged(self._store.list_prefix(prefix), self._work.list_prefix(prefix))

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        if prefix.strip("/"):
            return self._for(prefix).list_dir(prefix)
        return self._merged(self._store.list_dir(prefix), self._work.list_dir(prefix))

    async def _merged(self, *listings: AsyncIterator[str]) -> AsyncGenerator[str, None]:
        """Each key or name once: the output's, then the run's (its root metadata is the group's)."""
        seen: set[str] = set()
        for listing in listings:
            async for name in listing:
                if name not in seen:
                    seen.add(name)
                    yield name

    def close(self) -> None:
        self._store.close()
        self._work.close()

    def __repr__(self) -> str:
        return f"InPlaceStore(output={self._store}, work={self._work})"

    def __str__(self) -> str:
        return f"in-place-{self._store}"

"""The real file secret source, counting the reads that reach the file system (the
per-pass secret cache's tests)."""

from __future__ import annotations

import asyncio

from reconciler.credentials.base import Resolved
from reconciler.credentials.sources import FileSource
from reconciler.resources import SecretRef


class CountingFiles(FileSource):
    """The real file source, counting the reads that reach the file system; with
    ``gate`` set, every read waits for it (so every caller is waiting before a read
    finishes)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.gate: asyncio.Event | None = None

    async def resolve(self, ref: SecretRef, namespace: str, *, public: bool = False
                      ) -> Resolved:
        self.reads += 1
        if self.gate is not None:
            await self.gate.wait()
        return await super().resolve(ref, namespace, public=public)

"""Index service: write an image's signatures to both indexes, or remove them from both.

Write order is part of the design. Vectors are written before the record in the hash index,
and records are deleted before vectors, so "a record exists" implies "its vector exists".
If either store fails the call fails and a retry rewrites both (upserts are idempotent);
an image that is rejected writes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from lookalike.errors import ImageRejected
from lookalike.identity import content_sha256, image_id
from lookalike.ports import HashIndex, ImageRecord, VectorEntry, VectorIndex
from lookalike.signatures import SignatureExtractor, Signatures

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IndexRequest:
    key: str
    data: bytes
    owner: str


@dataclass(frozen=True, slots=True)
class IndexOutcome:
    record: ImageRecord
    status: Literal["indexed", "unchanged"]


class IndexService:
    def __init__(
        self,
        extractor: SignatureExtractor,
        hashes: HashIndex,
        vectors: VectorIndex,
        *,
        bucket: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.extractor = extractor
        self.hashes = hashes
        self.vectors = vectors
        self.bucket = bucket
        self.clock = clock

    def index(self, key: str, data: bytes, owner: str, *, skip_unchanged: bool = False) -> IndexOutcome:
        """Index one image; raises ImageRejected (nothing written) or StoreUnavailable (retry)."""
        result = self.index_many([IndexRequest(key, data, owner)], skip_unchanged=skip_unchanged)[0]
        if isinstance(result, ImageRejected):
            raise result
        return result

    def index_many(
        self, requests: Sequence[IndexRequest], *, skip_unchanged: bool = False
    ) -> list[IndexOutcome | ImageRejected]:
        """Index a batch: one batched embedding and one bulk write per store.

        Each request gets its outcome or its rejection in its place. A store failure raises
        StoreUnavailable for the whole batch, which is safe to retry as a whole.
        """
        ids = [image_id(self.bucket, r.key) for r in requests]
        current = self.hashes.get(ids, owner=None) if skip_unchanged else {}
        results: list[IndexOutcome | ImageRejected | None] = [None] * len(requests)
        pending: list[int] = []
        for i, request in enumerate(requests):
            existing = current.get(ids[i])
            if (
                existing is not None
                and existing.owner == request.owner
                and existing.sha256 == content_sha256(request.data)
                and existing.model == self.extractor.model.name
            ):
                results[i] = IndexOutcome(existing, "unchanged")
            else:
                pending.append(i)

        signatures = self.extractor.extract_many([requests[i].data for i in pending])
        now = self.clock()
        records: list[ImageRecord] = []
        entries: list[VectorEntry] = []
        for i, sig in zip(pending, signatures, strict=True):
            if isinstance(sig, ImageRejected):
                results[i] = sig
                continue
            record = _record(ids[i], requests[i], sig, now)
            records.append(record)
            entries.append(VectorEntry(record.id, record.owner, record.key, sig.sha256, sig.model, sig.vector))
            results[i] = IndexOutcome(record, "indexed")

        if records:
            self.vectors.upsert(entries)
            self.hashes.upsert(records)
        return [r for r in results if r is not None]

    def delete(self, key: str) -> None:
        """Remove ``key``'s entries from both indexes; a key never indexed is not an error."""
        ids = [image_id(self.bucket, key)]
        self.hashes.delete(ids)
        self.vectors.delete(ids)

    def lookup(self, key: str) -> ImageRecord | None:
        """The record indexed for ``key``, whatever its owner (for maintenance, not for users)."""
        found = self.hashes.get([image_id(self.bucket, key)], owner=None)
        return next(iter(found.values()), None)


def _record(record_id: str, request: IndexRequest, sig: Signatures, now: float) -> ImageRecord:
    return ImageRecord(
        id=record_id,
        owner=request.owner,
        key=request.key,
        sha256=sig.sha256,
        phash=sig.phash.hex,
        size=sig.size,
        width=sig.width,
        height=sig.height,
        trim=sig.trim,
        indexed_at=now,
        model=sig.model,
    )

"""Dual write: while a model change is under way, the indexer writes the next model's vectors too.

:class:`IndexService` knows one extractor and one vector index, and must stay that simple. The
composition root hands it these two decorators instead when ``LOOKALIKE_NEXT_MODEL_PATH`` is set:

- :class:`DualModelExtractor` returns the live model's signatures, as before, and embeds the same
  accepted images with the next model on the side, keyed by their SHA-256;
- :class:`DualWriteVectors` writes each live entry, then the next model's vector of the same
  bytes into the next collection, and deletes from both.

Keying by SHA-256 is exact, not a guess: a vector is a function of the bytes, so two uploads with
the same SHA-256 have the same next-model vector. The side table holds one batch (it is emptied
at each extraction), so the pair must be used as IndexService uses it: extract, then upsert, on
one thread at a time (a Lambda container; the local twin serialises its calls with a lock).

Searches never see the next collection: it is read only after the switch, when the next model
becomes the live one (docs/operations.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from lookalike.errors import ImageRejected
from lookalike.signatures import SignatureExtractor, Signatures

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from lookalike.ports import VectorEntry, VectorHit, VectorIndex

logger = logging.getLogger(__name__)


class DualModelExtractor(SignatureExtractor):
    """The live model's signatures, plus the next model's vectors of the same images on the side."""

    def __init__(self, live: SignatureExtractor, next_model: SignatureExtractor) -> None:
        super().__init__(live.model, live.limits)
        self.next_model = next_model
        self._next_vectors: dict[str, npt.NDArray[np.float32]] = {}

    def extract_many(self, blobs: Sequence[bytes]) -> list[Signatures | ImageRejected]:
        results = super().extract_many(blobs)
        accepted = [blob for blob, result in zip(blobs, results, strict=True) if isinstance(result, Signatures)]
        self._next_vectors = {
            sig.sha256: sig.vector for sig in self.next_model.extract_many(accepted) if isinstance(sig, Signatures)
        }
        return results

    def next_vector(self, sha256: str) -> npt.NDArray[np.float32] | None:
        """The next model's vector of the bytes extracted last with this SHA-256, if any."""
        return self._next_vectors.get(sha256)


class DualWriteVectors:
    """:class:`lookalike.ports.VectorIndex` that reads the live collection and writes both.

    Writes go live first, then next; a failure of either raises StoreUnavailable and the indexer's
    retry rewrites both (upserts are idempotent). Deletes reach both collections, so the next one
    never keeps an image the bucket no longer has.
    """

    def __init__(self, live: VectorIndex, next_vectors: VectorIndex, extractor: DualModelExtractor) -> None:
        self.live = live
        self.next_vectors = next_vectors
        self.extractor = extractor
        self.dimension = live.dimension

    def upsert(self, entries: Sequence[VectorEntry]) -> None:
        self.live.upsert(entries)
        model = self.extractor.next_model.model.name
        shadows = []
        for entry in entries:
            vector = self.extractor.next_vector(entry.sha256)
            if vector is None:  # not extracted by this pair: backfill --model next fills it in
                logger.warning("no next-model vector for %s; the next collection misses it", entry.key)
                continue
            shadows.append(replace(entry, model=model, vector=vector))
        self.next_vectors.upsert(shadows)

    def delete(self, ids: Sequence[str]) -> None:
        self.live.delete(ids)
        self.next_vectors.delete(ids)

    def search(
        self, owner: str, vector: npt.NDArray[np.float32], limit: int, min_similarity: float = -1.0
    ) -> list[VectorHit]:
        return self.live.search(owner, vector, limit, min_similarity)

    def get(self, ids: Sequence[str], owner: str | None) -> dict[str, VectorEntry]:
        return self.live.get(ids, owner)

    def count(self, owner: str | None = None) -> int:
        return self.live.count(owner)

    def scan_ids(self) -> Iterator[tuple[str, str]]:
        return self.live.scan_ids()

    def close(self) -> None:
        self.live.close()
        self.next_vectors.close()

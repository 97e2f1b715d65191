"""The small interfaces the services depend on, and the records that cross them.

Each port has a production adapter and a real embedded one (see ``lookalike.adapters``);
one contract suite (``tests/contract``) runs against all of them. Only the composition
root (``lookalike.bootstrap``) knows which concrete adapter is in use.

Owner isolation is part of every read: a method that takes ``owner`` never returns
another owner's entry, whatever characters the owner id contains.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from lookalike.hashing import PHash

#: Milvus refuses a search whose offset + limit exceeds this; pagination never goes deeper.
MAX_SEARCH_DEPTH = 16_384


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """What lookalike knows about one indexed image; the hash index keeps it whole."""

    id: str  # lookalike.identity.image_id(bucket, key): 32 lowercase hex characters
    owner: str
    key: str  # verbatim object key (unicode, spaces, '+', apostrophes kept as they are)
    sha256: str  # of the original bytes, 64 lowercase hex characters
    phash: str  # 16 lowercase hex characters (lookalike.hashing.PHash.hex)
    size: int  # bytes of the original object
    width: int  # of the decoded image, before border trimming
    height: int
    trim: str  # "none", "black" or "uniform": which borders were removed before hashing
    indexed_at: float  # UTC epoch seconds
    model: str  # the feature model that made the vector, e.g. "vgg16-gmp-fp32"


@dataclass(frozen=True, slots=True)
class VectorEntry:
    """One feature vector and the little the vector index keeps beside it."""

    id: str
    owner: str
    key: str
    sha256: str
    model: str
    vector: npt.NDArray[np.float32]  # shape (dimension,), L2-normalised


@dataclass(frozen=True, slots=True)
class HashHit:
    record: ImageRecord
    distance: int  # exact Hamming distance between the pHashes, 0..64
    segments_matched: int  # how many segment terms the candidate shared with the query


@dataclass(frozen=True, slots=True)
class VectorHit:
    id: str
    key: str
    similarity: float  # cosine similarity (inner product of L2-normalised vectors), -1..1


@dataclass(frozen=True, slots=True)
class StoredObject:
    """An object in the upload bucket (S3) or the local object store."""

    key: str
    size: int
    etag: str
    version_id: str | None = None


class HashIndex(Protocol):
    """Near-duplicate lookup by pHash segments, and the home of every ImageRecord."""

    def upsert(self, records: Sequence[ImageRecord]) -> None:
        """Insert or replace by id; writing the same record twice leaves one entry."""

    def delete(self, ids: Sequence[str]) -> None:
        """Remove entries; ids that are not there are not an error."""

    def get(self, ids: Sequence[str], owner: str | None) -> dict[str, ImageRecord]:
        """The records among ``ids`` (only ``owner``'s unless owner is None, for maintenance)."""

    def find_sha256(self, owner: str, sha256: str, limit: int) -> list[ImageRecord]:
        """Byte-identical images, ordered by key then id."""

    def find_near(self, owner: str, phash: PHash, max_distance: int, limit: int) -> list[HashHit]:
        """Every entry within ``max_distance`` bits, nearest first, ties by key then id.

        Candidates come from the segment terms (``SegmentLayout.query``); the distance
        is then computed exactly, so nothing farther than ``max_distance`` is returned.
        """

    def count(self, owner: str | None = None) -> int: ...

    def scan(self) -> Iterator[ImageRecord]:
        """Every record in the index (for reconcile, stats and backfill skips)."""

    def close(self) -> None: ...


class VectorIndex(Protocol):
    """Nearest neighbours by cosine similarity, per owner."""

    dimension: int

    def upsert(self, entries: Sequence[VectorEntry]) -> None:
        """Insert or replace by id; writing the same entry twice leaves one entry."""

    def delete(self, ids: Sequence[str]) -> None:
        """Remove entries; ids that are not there are not an error."""

    def search(
        self, owner: str, vector: npt.NDArray[np.float32], limit: int, min_similarity: float = -1.0
    ) -> list[VectorHit]:
        """The ``limit`` nearest of ``owner``'s entries (limit <= MAX_SEARCH_DEPTH),
        most similar first, ties broken by id, none below ``min_similarity``."""

    def get(self, ids: Sequence[str], owner: str | None) -> dict[str, VectorEntry]:
        """Entries with their vectors (only ``owner``'s unless owner is None)."""

    def count(self, owner: str | None = None) -> int: ...

    def scan_ids(self) -> Iterator[tuple[str, str]]:
        """(id, sha256) of every entry (for reconcile)."""

    def close(self) -> None: ...


class ObjectStore(Protocol):
    """Where the original images live: an S3 bucket, or a folder on a laptop."""

    bucket: str

    def head(self, key: str) -> StoredObject | None:
        """The object's size and version, or None when it does not exist."""

    def get(self, key: str) -> bytes:
        """The object's bytes; raises lookalike.errors.NotFound when it does not exist."""

    def put(self, key: str, data: bytes, content_type: str | None = None) -> StoredObject: ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""

    def list(self, prefix: str = "") -> Iterator[StoredObject]: ...

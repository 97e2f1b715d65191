"""Search service: one answer in tiers, each hit explaining itself.

- ``exact``: the same bytes (SHA-256).
- ``duplicate``: the same picture edited: pHash within the duplicate distance, or feature
  vectors more similar than the duplicate threshold.
- ``similar``: other neighbours in feature space above the minimum similarity, paginated.

Pagination applies to ``similar``; ``exact`` and ``duplicate`` are short by nature and come
whole on every page (capped at ``MAX_DUPLICATES``). Order is deterministic everywhere:
similarity descending, then Hamming distance, then key, then id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lookalike.errors import InvalidRequest, NotFound
from lookalike.hashing import PHash
from lookalike.identity import image_id
from lookalike.keys import owner_from_key
from lookalike.ports import MAX_SEARCH_DEPTH, HashIndex, ImageRecord, ObjectStore, VectorIndex
from lookalike.signatures import SignatureExtractor, Signatures
from lookalike.thresholds import Thresholds

if TYPE_CHECKING:
    import numpy.typing as npt

logger = logging.getLogger(__name__)

Tier = Literal["exact", "duplicate", "similar"]
MAX_DUPLICATES = 100
MAX_PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class Hit:
    id: str
    key: str
    tier: Tier
    similarity: float | None  # cosine similarity of the feature vectors
    distance: int | None  # Hamming distance of the pHashes
    segments_matched: int | None  # pHash segments shared with the query
    signals: tuple[str, ...]  # which signals put it in its tier: "sha256", "phash", "vector"
    trim: str | None  # borders trimmed from the stored image before hashing
    record: ImageRecord | None  # None when the entry is only in the vector index

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.key,
            "tier": self.tier,
            "similarity": None if self.similarity is None else round(self.similarity, 6),
            "distance": self.distance,
            "segments_matched": self.segments_matched,
            "signals": list(self.signals),
            "trim": self.trim,
            "record": None if self.record is None else asdict(self.record),
        }


@dataclass(frozen=True, slots=True)
class QueryInfo:
    sha256: str
    phash: str | None
    trim: str | None
    width: int | None
    height: int | None
    key: str | None = None


@dataclass(frozen=True)
class SearchResult:
    query: QueryInfo
    exact: list[Hit]
    duplicates: list[Hit]
    similar: list[Hit]
    page: int
    page_size: int
    has_more: bool
    thresholds: Thresholds
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape shared by the HTTP API and ``lookalike search --json``."""
        return {
            "query": asdict(self.query),
            "exact": [h.to_dict() for h in self.exact],
            "duplicates": [h.to_dict() for h in self.duplicates],
            "similar": [h.to_dict() for h in self.similar],
            "page": self.page,
            "page_size": self.page_size,
            "has_more": self.has_more,
            "thresholds": asdict(self.thresholds),
            "warnings": self.warnings,
        }


@dataclass(frozen=True)
class _Query:
    info: QueryInfo
    phash: PHash | None
    vector: npt.NDArray[np.float32] | None
    exclude_id: str | None  # a stored image searched by key does not find itself


class SearchService:
    def __init__(
        self,
        extractor: SignatureExtractor,
        hashes: HashIndex,
        vectors: VectorIndex,
        *,
        bucket: str,
        owner_prefix: str,
        defaults: Thresholds,
        objects: ObjectStore | None = None,
    ) -> None:
        self.extractor = extractor
        self.hashes = hashes
        self.vectors = vectors
        self.bucket = bucket
        self.owner_prefix = owner_prefix
        self.defaults = defaults
        self.objects = objects

    def search_image(
        self,
        data: bytes,
        owner: str,
        *,
        page: int = 1,
        page_size: int = 20,
        thresholds: Thresholds | None = None,
    ) -> SearchResult:
        """Search with an image's bytes; raises ImageRejected for anything that is not one."""
        sig = self.extractor.extract(data)
        return self._search(_query_of(sig), owner, page, page_size, thresholds)

    def search_key(
        self,
        key: str,
        owner: str,
        *,
        page: int = 1,
        page_size: int = 20,
        thresholds: Thresholds | None = None,
    ) -> SearchResult:
        """Search with an image already stored: indexed, or just uploaded under the owner's prefix.

        Another owner's key is answered exactly like a missing one (NotFound).
        """
        record_id = image_id(self.bucket, key)
        record = self.hashes.get([record_id], owner).get(record_id)
        entry = self.vectors.get([record_id], owner).get(record_id)
        if record is not None and entry is not None:
            info = QueryInfo(record.sha256, record.phash, record.trim, record.width, record.height, key)
            query = _Query(info, PHash.from_hex(record.phash), entry.vector, record_id)
            return self._search(query, owner, page, page_size, thresholds)
        data = self._read_own_object(key, owner)
        query = _query_of(self.extractor.extract(data), key=key, exclude_id=record_id)
        return self._search(query, owner, page, page_size, thresholds)

    def record(self, key: str, owner: str) -> ImageRecord:
        """The record of one of ``owner``'s images; NotFound for missing and foreign keys alike."""
        record_id = image_id(self.bucket, key)
        found = self.hashes.get([record_id], owner).get(record_id)
        if found is None:
            raise NotFound(f"no image {key!r}")
        return found

    def _read_own_object(self, key: str, owner: str) -> bytes:
        if self.objects is None or owner_from_key(key, self.owner_prefix) != owner:
            raise NotFound(f"no image {key!r}")
        return self.objects.get(key)

    def _search(
        self, query: _Query, owner: str, page: int, page_size: int, thresholds: Thresholds | None
    ) -> SearchResult:
        limits = (thresholds or self.defaults).validate()
        _validate_page(page, page_size)
        warnings: list[str] = []

        exact_records = [
            r for r in self.hashes.find_sha256(owner, query.info.sha256, MAX_DUPLICATES) if r.id != query.exclude_id
        ]
        near = []
        if query.phash is not None:
            near = [
                h
                for h in self.hashes.find_near(owner, query.phash, limits.duplicate_distance, MAX_DUPLICATES)
                if h.record.id != query.exclude_id
            ]

        # Fetch enough neighbours to fill this page after removing the exact and duplicate
        # hits (which come from the top of the same list), plus one to tell if there is more.
        depth = min(MAX_SEARCH_DEPTH, page * page_size + len(exact_records) + len(near) + MAX_DUPLICATES + 1)
        similarities: dict[str, float] = {}
        vector_keys: dict[str, str] = {}
        if query.vector is not None:
            for vhit in self.vectors.search(owner, query.vector, depth, limits.min_similarity):
                if vhit.id != query.exclude_id:
                    similarities[vhit.id] = vhit.similarity
                    vector_keys[vhit.id] = vhit.key

        # Candidates for the duplicate tier that the vector search did not rank still get a
        # similarity, so that every hit explains itself with every signal.
        near_hits = {h.record.id: h for h in near}
        missing = [i for i in [*near_hits, *(r.id for r in exact_records)] if i not in similarities]
        if missing and query.vector is not None:
            for entry_id, entry in self.vectors.get(missing, owner).items():
                similarities[entry_id] = float(np.dot(entry.vector, query.vector))

        records = {r.id: r for r in exact_records} | {h.record.id: h.record for h in near}
        unknown = [i for i in similarities if i not in records]
        records |= self.hashes.get(unknown, owner) if unknown else {}
        orphans = [i for i in similarities if i not in records]
        if orphans:
            warnings.append(f"{len(orphans)} neighbour(s) are in the vector index but not the hash index")
            logger.warning("vector entries without a record", extra={"ids": orphans[:10]})
        if query.vector is not None and any(i not in similarities for i in missing):
            warnings.append("some duplicates are in the hash index but not the vector index")
        # Every candidate's pHash distance: from the hash query, else from its stored record.
        distances = {
            i: near_hits[i].distance if i in near_hits else _distance(query.phash, records.get(i))
            for i in records.keys() | similarities.keys()
        }

        def hit(entry_id: str, tier: Tier) -> Hit:
            record = records.get(entry_id)
            near_hit = near_hits.get(entry_id)
            similarity = similarities.get(entry_id)
            distance = distances.get(entry_id)
            alike = similarity is not None and similarity >= limits.duplicate_similarity
            # Each signal close, neither enough alone: both are what made it a duplicate.
            agreeing = near_hit is None and not alike and limits.agree(distance, similarity)
            signals = []
            if tier == "exact":
                signals.append("sha256")
            if near_hit is not None or agreeing:
                signals.append("phash")
            if alike or agreeing:
                signals.append("vector")
            return Hit(
                id=entry_id,
                key=record.key if record else vector_keys[entry_id],
                tier=tier,
                similarity=similarity,
                distance=distance,
                segments_matched=near_hit.segments_matched if near_hit else None,
                signals=tuple(signals),
                trim=record.trim if record else None,
                record=record,
            )

        exact_ids = [r.id for r in exact_records]
        duplicate_ids = {*near_hits} | {i for i, s in similarities.items() if limits.is_duplicate(distances[i], s)}
        duplicate_ids -= set(exact_ids)
        exact = _ordered(hit(i, "exact") for i in exact_ids)
        duplicates = _ordered(hit(i, "duplicate") for i in duplicate_ids)[:MAX_DUPLICATES]
        taken = set(exact_ids) | duplicate_ids
        similar_all = _ordered(hit(i, "similar") for i in similarities if i not in taken)
        start = (page - 1) * page_size
        return SearchResult(
            query=query.info,
            exact=exact,
            duplicates=duplicates,
            similar=similar_all[start : start + page_size],
            page=page,
            page_size=page_size,
            has_more=len(similar_all) > start + page_size,
            thresholds=limits,
            warnings=warnings,
        )


def _query_of(sig: Signatures, *, key: str | None = None, exclude_id: str | None = None) -> _Query:
    info = QueryInfo(sig.sha256, sig.phash.hex, sig.trim, sig.width, sig.height, key)
    return _Query(info, sig.phash, sig.vector, exclude_id)


def _distance(phash: PHash | None, record: ImageRecord | None) -> int | None:
    if phash is None or record is None:
        return None
    return phash.distance(PHash.from_hex(record.phash))


def _ordered(hits: Iterable[Hit]) -> list[Hit]:
    def order(h: Hit) -> tuple[float, int, str, str]:
        similarity = round(h.similarity, 6) if h.similarity is not None else -2.0
        distance = h.distance if h.distance is not None else 65
        return (-similarity, distance, h.key, h.id)

    return sorted(hits, key=order)


def _validate_page(page: int, page_size: int) -> None:
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidRequest("page_size", f"must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
    max_page = MAX_SEARCH_DEPTH // page_size
    if not 1 <= page <= max_page:
        raise InvalidRequest(
            "page",
            f"must be between 1 and {max_page} at page_size {page_size} "
            f"(results go {MAX_SEARCH_DEPTH} deep), got {page}",
        )

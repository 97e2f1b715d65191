"""The production hash index: one OpenSearch document per image, its pHash segments as keyword terms.

Near-duplicate lookup is a terms query (any ``k`` of the ``m`` segment terms, within the
owner's documents), then an exact Hamming re-rank in Python from the stored ``phash``.

Works against a managed OpenSearch domain and OpenSearch Serverless (a *search* collection,
which accepts custom document ids). Serverless refuses the ``refresh`` parameter on writes
and refreshes on its own schedule: the index passes ``refresh`` only when asked to, and a
signed-for-``aoss`` client with ``refresh`` set is a configuration error. Reads by id
(``get``) use the real-time multi-get; searches and counts see writes once refreshed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

from opensearchpy import AWSV4SignerAuth, OpenSearch, RequestsHttpConnection, helpers
from opensearchpy.exceptions import OpenSearchException, RequestError

from lookalike.errors import ConfigurationError, StoreUnavailable
from lookalike.hashing import DEFAULT_LAYOUT, PHash, SegmentLayout
from lookalike.ports import HashHit, ImageRecord

logger = logging.getLogger(__name__)

_RECORD_FIELDS = ["id", "owner", "key", "sha256", "phash", "size", "width", "height", "trim", "indexed_at", "model"]
_KEYWORDS = ("id", "owner", "key", "sha256", "phash", "segments", "trim", "model")
_MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        **{name: {"type": "keyword"} for name in _KEYWORDS},
        "size": {"type": "long"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "indexed_at": {"type": "double"},  # UTC epoch seconds, as in ImageRecord
    },
}
_BULK_CHUNK = 500
_IDS_PER_REQUEST = 1_000
_SCAN_PAGE = 1_000

OpenSearchAuth = Literal["none", "es", "aoss"]


def opensearch_client(
    url: str,
    *,
    auth: OpenSearchAuth = "none",
    region: str | None = None,
    credentials: Any = None,
    timeout: float = 10.0,
) -> OpenSearch:
    """A client for ``url``: unsigned (``"none"``), or SigV4-signed for a managed domain
    (``"es"``) or OpenSearch Serverless (``"aoss"``).

    Signed clients use botocore's default credential chain unless ``credentials`` is given,
    and always verify TLS certificates. Building a client does not touch the network.

    >>> opensearch_client("http://localhost:9200").transport.get_connection().host
    'http://localhost:9200'
    """
    if auth == "none":
        https = url.startswith("https://")
        return OpenSearch(hosts=[url], use_ssl=https, verify_certs=https, timeout=timeout)
    if auth not in ("es", "aoss"):
        raise ConfigurationError(f"OpenSearch auth must be none, es or aoss, not {auth!r}")
    if not region:
        raise ConfigurationError(f"OpenSearch auth {auth!r} signs requests for a region: set the AWS region")
    if credentials is None:
        import botocore.session

        credentials = botocore.session.Session().get_credentials()
        if credentials is None:
            raise ConfigurationError(f"OpenSearch auth {auth!r} needs AWS credentials and none were found")
    return OpenSearch(
        hosts=[url],
        http_auth=AWSV4SignerAuth(credentials, region, auth),
        use_ssl=True,
        verify_certs=True,
        connection_class=RequestsHttpConnection,
        timeout=timeout,
    )


def _signing_service(client: OpenSearch) -> str | None:
    """The SigV4 service name the client signs for (``"es"``, ``"aoss"``), or None if unsigned."""
    connection = client.transport.get_connection()
    auth = getattr(getattr(connection, "session", None), "auth", None)
    return getattr(auth, "service", None)


class OpenSearchHashIndex:
    """:class:`lookalike.ports.HashIndex` on an OpenSearch index (``ensure_index`` creates it).

    ``refresh`` is passed to every write when not False (``True`` or ``"wait_for"`` make writes
    searchable before returning: tests and the local twin use it; Lambdas don't).
    ``candidate_cap`` bounds the candidates one ``find_near`` re-ranks (highest scoring, i.e.
    most shared segments, first); reaching it is logged, since nearer entries may be missed.
    """

    def __init__(
        self,
        client: OpenSearch,
        index: str = "lookalike-images",
        layout: SegmentLayout = DEFAULT_LAYOUT,
        refresh: bool | str = False,
        *,
        candidate_cap: int = 1_000,
    ) -> None:
        if refresh is not False and _signing_service(client) == "aoss":
            raise ConfigurationError("OpenSearch Serverless does not accept refresh on writes: leave it False")
        self.client = client
        self.index = index
        self.layout = layout
        self.candidate_cap = candidate_cap
        self._write_params: dict[str, Any] = {} if refresh is False else {"refresh": refresh}

    def ensure_index(self) -> None:
        """Create the index with its strict mapping, or check that an existing one uses this layout."""
        widths = list(self.layout.widths)
        try:
            if not self.client.indices.exists(index=self.index):
                body = {"mappings": {**_MAPPING, "_meta": {"segment_widths": widths}}}
                try:
                    self.client.indices.create(index=self.index, body=body)
                    logger.info("created OpenSearch index %s", self.index)
                    return
                except RequestError as exc:  # another process created it first: check it below
                    if exc.error != "resource_already_exists_exception":
                        raise
            mapping: dict[str, Any] = self.client.indices.get_mapping(index=self.index)
        except OpenSearchException as exc:
            raise StoreUnavailable(f"OpenSearch index {self.index} cannot be prepared: {exc}") from exc
        # keyed by the concrete index name, which differs from self.index when that is an alias
        index_mapping: dict[str, Any] = next(iter(mapping.values())) if mapping else {}
        existing = index_mapping.get("mappings", {}).get("_meta", {}).get("segment_widths")
        if existing != widths:
            raise ConfigurationError(
                f"OpenSearch index {self.index} holds segments of widths {existing}, not {widths}: "
                "reindex, or use the layout it was built with"
            )

    # -- writes -------------------------------------------------------------------------------

    def upsert(self, records: Sequence[ImageRecord]) -> None:
        """Index (insert or replace) one document per record, ``_id`` = record id, in bulk chunks."""
        self._bulk(
            {"_op_type": "index", "_index": self.index, "_id": r.id, "_source": self._document(r)} for r in records
        )

    def _document(self, r: ImageRecord) -> dict[str, Any]:
        return {
            "id": r.id, "owner": r.owner, "key": r.key, "sha256": r.sha256, "phash": r.phash,
            "segments": self.layout.terms(PHash.from_hex(r.phash)), "size": r.size, "width": r.width,
            "height": r.height, "trim": r.trim, "indexed_at": r.indexed_at, "model": r.model,
        }  # fmt: skip

    def delete(self, ids: Sequence[str]) -> None:
        """Delete documents by id; a 404 (not there) counts as done."""
        self._bulk({"_op_type": "delete", "_index": self.index, "_id": i} for i in ids)

    def _bulk(self, actions: Iterable[dict[str, Any]]) -> None:
        failed: list[str] = []
        try:
            for ok, item in helpers.streaming_bulk(
                self.client,
                actions,
                chunk_size=_BULK_CHUNK,
                raise_on_error=False,
                yield_ok=False,
                max_retries=2,  # on 429 (throttled) only
                initial_backoff=1,
                **self._write_params,
            ):
                op, result = next(iter(item.items()))
                if not ok and not (op == "delete" and result.get("status") == 404):
                    failed.append(str(result.get("_id")))
                    logger.error("OpenSearch %s of %s failed: %s", op, result.get("_id"), result.get("error"))
        except OpenSearchException as exc:
            raise StoreUnavailable(f"OpenSearch bulk write to {self.index} failed: {exc}") from exc
        if failed:
            shown = ", ".join(failed[:10]) + (" ..." if len(failed) > 10 else "")
            raise StoreUnavailable(f"OpenSearch bulk write to {self.index} failed for {len(failed)} ids: {shown}")

    # -- reads --------------------------------------------------------------------------------

    def get(self, ids: Sequence[str], owner: str | None) -> dict[str, ImageRecord]:
        """The records among ``ids`` (real-time multi-get; another owner's are dropped)."""
        found: dict[str, ImageRecord] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _IDS_PER_REQUEST):
            body = {"ids": unique[start : start + _IDS_PER_REQUEST]}
            response = self._call(self.client.mget, index=self.index, body=body, _source_includes=_RECORD_FIELDS)
            for doc in response["docs"]:
                if doc.get("found"):
                    record = _record(doc["_source"])
                    if owner is None or record.owner == owner:
                        found[record.id] = record
        return found

    def find_sha256(self, owner: str, sha256: str, limit: int) -> list[ImageRecord]:
        """Byte-identical images of ``owner``, ordered by key then id."""
        body = {
            "query": {"bool": {"filter": [{"term": {"owner": owner}}, {"term": {"sha256": sha256}}]}},
            "sort": [{"key": "asc"}, {"id": "asc"}],
            "size": limit,
            "_source": _RECORD_FIELDS,
        }
        return [_record(hit["_source"]) for hit in self._search(body)["hits"]["hits"]]

    def find_near(self, owner: str, phash: PHash, max_distance: int, limit: int) -> list[HashHit]:
        """Every entry of ``owner`` within ``max_distance`` bits, nearest first, ties by key then id."""
        query = self.layout.query(phash, max_distance)
        body = {
            "query": {
                "bool": {
                    "filter": [{"term": {"owner": owner}}],
                    "should": [{"term": {"segments": term}} for term in query.terms],
                    "minimum_should_match": query.minimum_should_match,
                }
            },
            "size": self.candidate_cap,
            "_source": _RECORD_FIELDS,
            "track_total_hits": False,
        }
        candidates = self._search(body)["hits"]["hits"]
        if len(candidates) >= self.candidate_cap:
            logger.warning(
                "find_near reached its cap of %d candidates (max_distance %d): nearer entries may be missed",
                self.candidate_cap,
                max_distance,
            )
        hits = []
        for candidate in candidates:
            record = _record(candidate["_source"])
            stored = PHash.from_hex(record.phash)
            distance = phash.distance(stored)
            if distance <= max_distance:
                hits.append(HashHit(record, distance, self.layout.matched(phash, stored)))
        hits.sort(key=lambda h: (h.distance, h.record.key, h.record.id))
        return hits[:limit]

    def count(self, owner: str | None = None) -> int:
        query = {"match_all": {}} if owner is None else {"term": {"owner": owner}}
        return int(self._call(self.client.count, index=self.index, body={"query": query})["count"])

    def scan(self) -> Iterator[ImageRecord]:
        """Every record, ordered by id, in pages (``search_after``: no scroll or point-in-time context,
        which Serverless does not offer)."""
        body: dict[str, Any] = {
            "query": {"match_all": {}},
            "sort": [{"id": "asc"}],
            "size": _SCAN_PAGE,
            "_source": _RECORD_FIELDS,
        }
        while True:
            hits = self._search(body)["hits"]["hits"]
            yield from (_record(hit["_source"]) for hit in hits)
            if len(hits) < _SCAN_PAGE:
                return
            body["search_after"] = hits[-1]["sort"]

    def _search(self, body: dict[str, Any]) -> Any:
        return self._call(self.client.search, index=self.index, body=body)

    def _call(self, method: Any, **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except OpenSearchException as exc:
            raise StoreUnavailable(f"OpenSearch request to {self.index} failed: {exc}") from exc

    def close(self) -> None:
        """Close the client: the index takes over the client it is given."""
        self.client.close()


def _record(source: dict[str, Any]) -> ImageRecord:
    return ImageRecord(**{name: source[name] for name in _RECORD_FIELDS})

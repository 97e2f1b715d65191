"""The vector index: Milvus (a server or Zilliz Cloud) in production, Milvus Lite on a laptop.

One collection, one entity per image: ``id`` (primary key), ``owner`` (partition key),
``key``, ``sha256``, ``model`` and the L2-normalised ``vector``, searched by inner product
(= cosine similarity).

Recall depends on the index type. Milvus Lite gets FLAT (exact): its HNSW lost true nearest
neighbours (recall@10 about 0.8 on feature-like vectors, see MEASUREMENTS.md), and an index
that silently loses originals defeats the purpose. A server gets AUTOINDEX by default, which
is approximate; measure its recall on your data before trusting it, or pass ``index_type``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import grpc  # pymilvus lets some grpc.RpcError through
import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from lookalike.errors import ConfigurationError, InvalidRequest, StoreUnavailable
from lookalike.ports import MAX_SEARCH_DEPTH, VectorEntry, VectorHit

if TYPE_CHECKING:
    import numpy.typing as npt

logger = logging.getLogger(__name__)

_CLIENT_ERRORS = (MilvusException, grpc.RpcError)
_ENTRY_FIELDS = ["id", "owner", "key", "sha256", "model", "vector"]
_WRITE_BATCH = 1_000
_IDS_PER_QUERY = 500
_SCAN_BATCH = 1_000
#: Ties are decided on similarity rounded to this many decimals, so that float noise between
#: identical vectors cannot reorder them: equal-looking hits are ordered by id.
_SIMILARITY_DECIMALS = 6
#: Extra hits fetched past ``limit`` so that ties straddling the cut are ordered by id too.
_TIE_MARGIN = 16
_LOAD_ATTEMPTS = 4


def milvus_filter(
    *, owner: str | None = None, ids: Sequence[str] | None = None, templated: bool
) -> tuple[str, dict[str, Any]]:
    r"""A filter expression matching ``owner`` and/or ``ids``, and its template parameters.

    On a server the values travel as filter templating parameters (``owner == {owner}``):
    they are never parsed as expression text, so no owner id can widen the filter.
    Milvus Lite has no templating, so the values are written as double-quoted literals with
    every character its parser treats specially escaped: a backslash before ``\`` and ``"``,
    and ``\n``, ``\r``, ``\t`` for line breaks and tabs (a raw line break would end the
    literal). Nothing else is special inside a double-quoted literal, so single quotes,
    ``||``, ``or``, braces and unicode stay data.

    >>> print(milvus_filter(owner='a" || owner != "', templated=False)[0])
    owner == "a\" || owner != \""
    >>> milvus_filter(owner="ann", ids=["x"], templated=True)
    ('owner == {owner} and id in {ids}', {'owner': 'ann', 'ids': ['x']})
    """
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if owner is not None:
        clauses.append("owner == {owner}" if templated else f"owner == {_quote(owner)}")
        params["owner"] = owner
    if ids is not None:
        clauses.append("id in {ids}" if templated else f"id in [{', '.join(map(_quote, ids))}]")
        params["ids"] = list(ids)
    return " and ".join(clauses), params if templated else {}


_LITERAL_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _quote(value: str) -> str:
    return '"' + value.translate(_LITERAL_ESCAPES) + '"'


class MilvusVectorIndex:
    """:class:`lookalike.ports.VectorIndex` on one Milvus collection (created if missing).

    ``uri`` is a local ``.db`` file for Milvus Lite, or ``http(s)://`` for a server or
    Zilliz Cloud (``token`` from the caller). Pass ``client`` to reuse a connection; whether
    it is Lite is asked of the server itself. Reads use Strong consistency, so an entry is
    visible to ``search``/``get``/``count`` as soon as ``upsert`` returns.
    """

    def __init__(
        self,
        client: MilvusClient | None = None,
        *,
        uri: str = "http://localhost:19530",
        token: str | None = None,
        collection: str = "lookalike_vgg16_gmp_fp32",
        dimension: int = 512,
        index_type: str | None = None,
    ) -> None:
        self.collection = collection
        self.dimension = dimension
        self._owns_client = client is None
        try:
            self.client = client if client is not None else MilvusClient(uri=uri, token=token or "")
            self.lite = str(self.client.get_server_version()).startswith("milvus_lite")
            if self.client.has_collection(collection):
                self._check_dimension()
                self._load()
            else:
                self._create(index_type or ("FLAT" if self.lite else "AUTOINDEX"))
        except _CLIENT_ERRORS as exc:
            raise StoreUnavailable(f"Milvus collection {collection} is unavailable: {exc}") from exc

    def _create(self, index_type: str) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, max_length=32, is_primary=True)
        schema.add_field("owner", DataType.VARCHAR, max_length=512, is_partition_key=True)
        schema.add_field("key", DataType.VARCHAR, max_length=2048)
        schema.add_field("sha256", DataType.VARCHAR, max_length=64)
        schema.add_field("model", DataType.VARCHAR, max_length=64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dimension)
        index_params = self.client.prepare_index_params()
        index_params.add_index(field_name="vector", index_type=index_type, metric_type="IP")
        with _quiet_unimplemented_calls(self.lite):
            self.client.create_collection(self.collection, schema=schema, index_params=index_params)
        logger.info("created Milvus collection %s (%s, dim %d)", self.collection, index_type, self.dimension)

    def _check_dimension(self) -> None:
        fields = self.client.describe_collection(self.collection)["fields"]
        existing = next((int(f["params"]["dim"]) for f in fields if f["name"] == "vector"), None)
        if existing != self.dimension:
            raise ConfigurationError(
                f"Milvus collection {self.collection} holds vectors of dimension {existing}, "
                f"not {self.dimension}: use another collection name, or the model it was built with"
            )

    def _load(self) -> None:
        """Load the collection (released after a restart), retrying briefly: Milvus Lite can
        report a freshly flushed file as not fully written."""
        for attempt in range(_LOAD_ATTEMPTS):
            try:
                self.client.load_collection(self.collection)
                return
            except MilvusException as exc:
                if attempt == _LOAD_ATTEMPTS - 1:
                    raise
                logger.warning("loading Milvus collection %s failed, retrying: %s", self.collection, exc)
                time.sleep(0.1 * 2**attempt)

    # -- writes -------------------------------------------------------------------------------

    def upsert(self, entries: Sequence[VectorEntry]) -> None:
        """Insert or replace by id; writing the same entry twice leaves one entity."""
        latest = {e.id: e for e in entries}  # one batch must not carry a primary key twice
        rows = [self._row(e) for e in latest.values()]
        for start in range(0, len(rows), _WRITE_BATCH):
            self._call(self.client.upsert, self.collection, rows[start : start + _WRITE_BATCH])

    def _row(self, e: VectorEntry) -> dict[str, Any]:
        vector = self._checked(e.vector, "vector")
        return {"id": e.id, "owner": e.owner, "key": e.key, "sha256": e.sha256, "model": e.model, "vector": vector}

    def _checked(self, vector: npt.NDArray[np.float32], parameter: str) -> list[float]:
        array = np.asarray(vector, dtype=np.float32)
        if array.shape != (self.dimension,) or not np.isfinite(array).all():
            raise InvalidRequest(parameter, f"expected {self.dimension} finite floats, got shape {array.shape}")
        return array.tolist()

    def delete(self, ids: Sequence[str]) -> None:
        """Delete by id; ids that are not there are not an error."""
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _IDS_PER_QUERY):
            expression, params = milvus_filter(ids=unique[start : start + _IDS_PER_QUERY], templated=not self.lite)
            self._call(self.client.delete, self.collection, filter=expression, filter_params=params)

    # -- reads --------------------------------------------------------------------------------

    def search(
        self, owner: str, vector: npt.NDArray[np.float32], limit: int, min_similarity: float = -1.0
    ) -> list[VectorHit]:
        """The ``limit`` most similar of ``owner``'s entries, ties broken by id."""
        if not 1 <= limit <= MAX_SEARCH_DEPTH:
            raise InvalidRequest("limit", f"must be between 1 and {MAX_SEARCH_DEPTH}, got {limit}")
        expression, params = milvus_filter(owner=owner, templated=not self.lite)
        results = self._call(
            self.client.search,
            self.collection,
            data=[self._checked(vector, "vector")],
            filter=expression,
            filter_params=params,
            limit=min(limit + _TIE_MARGIN, MAX_SEARCH_DEPTH),
            output_fields=["key"],
            search_params={"metric_type": "IP"},
            consistency_level="Strong",
        )
        # The inner product of two unit vectors in float32 can exceed 1 by a few ulps: a cosine cannot.
        hits = [
            VectorHit(
                str(hit["id"]), hit["entity"]["key"], round(min(float(hit["distance"]), 1.0), _SIMILARITY_DECIMALS)
            )
            for hit in results[0]
        ]
        hits.sort(key=lambda h: (-h.similarity, h.id))
        return [h for h in hits[:limit] if h.similarity >= min_similarity]

    def get(self, ids: Sequence[str], owner: str | None) -> dict[str, VectorEntry]:
        """Entries with their vectors (only ``owner``'s unless owner is None)."""
        found: dict[str, VectorEntry] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _IDS_PER_QUERY):
            chunk = unique[start : start + _IDS_PER_QUERY]
            expression, params = milvus_filter(owner=owner, ids=chunk, templated=not self.lite)
            rows = self._call(
                self.client.query,
                self.collection,
                filter=expression,
                filter_params=params,
                output_fields=_ENTRY_FIELDS,
                consistency_level="Strong",
            )
            for row in rows:
                found[row["id"]] = VectorEntry(
                    id=row["id"], owner=row["owner"], key=row["key"], sha256=row["sha256"], model=row["model"],
                    vector=np.asarray(row["vector"], dtype=np.float32),
                )  # fmt: skip
        return found

    def count(self, owner: str | None = None) -> int:
        expression, params = ("", {}) if owner is None else milvus_filter(owner=owner, templated=not self.lite)
        rows = self._call(
            self.client.query,
            self.collection,
            filter=expression,
            filter_params=params,
            output_fields=["count(*)"],
            consistency_level="Strong",
        )
        return int(rows[0]["count(*)"])

    def scan_ids(self) -> Iterator[tuple[str, str]]:
        """(id, sha256) of every entity, read in batches."""
        iterator = self._call(
            self.client.query_iterator,
            self.collection,
            batch_size=_SCAN_BATCH,
            output_fields=["id", "sha256"],
            consistency_level="Strong",
        )
        try:
            while batch := self._call(iterator.next):
                yield from ((row["id"], row["sha256"]) for row in batch)
        finally:
            iterator.close()

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except _CLIENT_ERRORS as exc:
            raise StoreUnavailable(f"Milvus request on {self.collection} failed: {exc}") from exc

    def close(self) -> None:
        """Close the client if this index built it (a client passed in belongs to the caller)."""
        if self._owns_client:
            self.client.close()


class _UnimplementedCallFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Method not implemented" not in record.getMessage() and not (
            record.exc_info and isinstance(record.exc_info[1], NotImplementedError)
        )


@contextmanager
def _quiet_unimplemented_calls(lite: bool) -> Iterator[None]:
    """Milvus Lite serves in this process and does not implement AllocTimestamp, which pymilvus
    asks for once while waiting for a new index; pymilvus copes, but the server would log a
    traceback on the user's terminal for it."""
    if not lite:
        yield
        return
    server_log, quiet = logging.getLogger("grpc._server"), _UnimplementedCallFilter()
    server_log.addFilter(quiet)
    try:
        yield
    finally:
        server_log.removeFilter(quiet)

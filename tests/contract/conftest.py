"""One fixture per port, parametrised over every adapter: each contract test runs against all of them.

Real local backends, shared where that costs no isolation:
- hash index: SQLite in the test's tmp_path; OpenSearch on osmem-server (one server for the
  session, a fresh clone per test); a real OpenSearch when ``OPENSEARCH_URL`` is set (a unique
  index per test, deleted afterwards; Serverless cannot run this suite, it has no ``refresh``).
- vector index: Milvus Lite (one database file for the session, a fresh collection per test,
  dropped afterwards: creating a collection costs about half a second, starting a database
  about as much again); a real Milvus when ``MILVUS_URI`` is set (token from ``MILVUS_TOKEN``).
- object store: a folder in tmp_path; S3 on moto's server (one for the session, on a free
  local port, a fresh versioned bucket per test).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from opensearchpy import OpenSearch
from osmem_server import OsmemServer
from pymilvus import MilvusClient

from lookalike.adapters.local_objects import LocalObjectStore
from lookalike.adapters.milvus import MilvusVectorIndex
from lookalike.adapters.opensearch_hashes import OpenSearchHashIndex, opensearch_client
from lookalike.adapters.s3_objects import S3ObjectStore
from lookalike.adapters.sqlite_hashes import SqliteHashIndex
from lookalike.hashing import DEFAULT_LAYOUT, SegmentLayout
from lookalike.ports import HashIndex, ObjectStore, VectorIndex

#: The feature model's dimension: the contract runs at the size production uses.
DIMENSION = 512

OPENSEARCH_URL = os.environ.get("OPENSEARCH_URL")
MILVUS_URI = os.environ.get("MILVUS_URI")

HASH_BACKENDS = ["sqlite", "opensearch-osmem", *(["opensearch-server"] if OPENSEARCH_URL else [])]
VECTOR_BACKENDS = ["milvus-lite", *(["milvus-server"] if MILVUS_URI else [])]
OBJECT_BACKENDS = ["local", "s3-moto"]


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@dataclass
class Backend:
    """One adapter's storage for one test: ``open`` gives a new adapter on the same data."""

    name: str
    opener: Callable[..., Any]
    opened: list[Any] = field(default_factory=list)

    def open(self, *args: Any) -> Any:
        adapter = self.opener(*args)
        self.opened.append(adapter)
        return adapter

    def close(self) -> None:
        for adapter in self.opened:
            adapter.close()


# -- hash index ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def osmem_server() -> Iterator[OsmemServer]:
    """One in-memory OpenSearch for the session (overrides the osmem plugin's, which is Japanese-enabled)."""
    server = OsmemServer.start(japanese=False)
    yield server
    server.close()


@pytest.fixture(params=HASH_BACKENDS)
def hash_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """``open(layout)`` gives a HashIndex on this test's storage; writes are searchable at once."""
    if request.param == "sqlite":
        backend = Backend("sqlite", lambda layout: SqliteHashIndex(tmp_path / "hashes.sqlite", layout))
        yield backend
        backend.close()
        return

    if request.param == "opensearch-osmem":
        clone = request.getfixturevalue("osmem_server").clone()
        client = OpenSearch(hosts=[clone.url])
        cleanup: Callable[[], None] = clone.close
    else:
        assert OPENSEARCH_URL is not None
        # a managed domain may be signed (OPENSEARCH_AUTH=es); Serverless cannot run this suite:
        # it refuses refresh on writes, so a search right after a write may not see it
        signed = os.environ.get("OPENSEARCH_AUTH") == "es"
        client = opensearch_client(OPENSEARCH_URL, auth="es" if signed else "none", region=os.environ.get("AWS_REGION"))
        cleanup = lambda: None  # noqa: E731
    index_name = _unique("lookalike-contract-")

    def open_index(layout: SegmentLayout) -> OpenSearchHashIndex:
        index = OpenSearchHashIndex(client, index_name, layout, refresh="wait_for")
        index.ensure_index()
        return index

    backend = Backend(request.param, open_index)
    yield backend
    client.indices.delete(index=index_name, ignore_unavailable=True)
    backend.close()  # each index closes the client it was given
    client.close()
    cleanup()


@pytest.fixture
def hash_index(hash_backend: Backend) -> HashIndex:
    index: HashIndex = hash_backend.open(DEFAULT_LAYOUT)
    return index


# -- vector index ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def milvus_lite_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusClient]:
    client = MilvusClient(str(tmp_path_factory.mktemp("milvus") / "v.db"))
    yield client
    client.close()


@pytest.fixture(scope="session")
def milvus_server_client() -> Iterator[MilvusClient]:
    assert MILVUS_URI is not None
    client = MilvusClient(uri=MILVUS_URI, token=os.environ.get("MILVUS_TOKEN", ""))
    yield client
    client.close()


@pytest.fixture(params=VECTOR_BACKENDS)
def vector_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """``open(dimension)`` gives a VectorIndex on this test's own collection."""
    fixture = "milvus_lite_client" if request.param == "milvus-lite" else "milvus_server_client"
    client: MilvusClient = request.getfixturevalue(fixture)
    collection = _unique("contract_")
    backend = Backend(
        request.param, lambda dimension: MilvusVectorIndex(client, collection=collection, dimension=dimension)
    )
    yield backend
    backend.close()
    client.drop_collection(collection)


@pytest.fixture
def vector_index(vector_backend: Backend) -> VectorIndex:
    index: VectorIndex = vector_backend.open(DIMENSION)
    return index


# -- object store ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 in server mode: real HTTP, as boto3 talks to S3, on a free local port."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(params=OBJECT_BACKENDS)
def object_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(tmp_path / "bucket", bucket="gallery")
    client = boto3.client(
        "s3",
        endpoint_url=request.getfixturevalue("moto_endpoint"),
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    bucket = _unique("contract-")
    client.create_bucket(Bucket=bucket)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return S3ObjectStore(bucket, client)

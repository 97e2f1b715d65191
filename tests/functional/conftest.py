"""Real backends for the functional tests: S3, SQS and DynamoDB on a moto server, OpenSearch on
osmem, Milvus Lite and SQLite in a temporary folder, and the one feature model of the session.

The services are composed here around the session's model (``bootstrap.build_services``
would load a model per test); the handlers are then driven with real event JSON.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus

import boto3
import pytest
from PIL import Image

from lookalike.adapters.milvus import MilvusVectorIndex
from lookalike.adapters.s3_objects import S3ObjectStore
from lookalike.adapters.sqlite_hashes import SqliteHashIndex
from lookalike.bootstrap import Services
from lookalike.ports import HashIndex
from lookalike.services import IndexService, SearchService
from lookalike.settings import Settings
from lookalike.signatures import SignatureExtractor
from tests.conftest import REPO_ROOT, jpeg

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from osmem_server import OsmemServer

EVENTS_DIR = REPO_ROOT / "events"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session", autouse=True)
def _powertools_env() -> Iterator[None]:
    """Set before any handler module is imported: Powertools reads them when it is set up."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("POWERTOOLS_TRACE_DISABLED", "1")
        patch.setenv("POWERTOOLS_METRICS_NAMESPACE", "lookalike")
        patch.setenv("POWERTOOLS_SERVICE_NAME", "lookalike-tests")
        yield


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A moto server (S3, SQS, DynamoDB) on a free loopback port, for the whole session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def point_aws_at(patch: pytest.MonkeyPatch, url: str) -> None:
    """Fake credentials, and every boto3 client the code builds pointed at the moto server."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        patch.setenv(name, "testing")
    patch.setenv("AWS_DEFAULT_REGION", REGION)
    patch.setenv("AWS_REGION", REGION)
    patch.setenv("AWS_ENDPOINT_URL", url)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, moto_url: str) -> str:
    point_aws_at(monkeypatch, moto_url)
    return moto_url


@pytest.fixture(scope="session")
def osmem_server() -> Iterator[OsmemServer]:
    from osmem_server import OsmemServer

    server = OsmemServer.start(japanese=False)
    yield server
    server.close()


@pytest.fixture(scope="session")
def extractor(feature_model: Any) -> SignatureExtractor:
    return SignatureExtractor(feature_model)


@dataclass
class Stack:
    """Services on real backends, plus handles on them for the tests to look behind the API."""

    services: Services
    s3: S3Client
    bucket: str
    get_object_calls: list[str] = field(default_factory=list)  # keys, as S3 saw GetObject requests

    @property
    def settings(self) -> Settings:
        return self.services.settings

    def put(self, key: str, data: bytes, content_type: str = "image/jpeg") -> dict[str, Any]:
        response = self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        return {"size": len(data), "eTag": response["ETag"].strip('"')}

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=key)

    def indexed(self, key: str) -> tuple[bool, bool]:
        """(in the hash index, in the vector index) for ``key``."""
        from lookalike.identity import image_id

        record_id = image_id(self.bucket, key)
        return (
            record_id in self.services.hashes.get([record_id], None),
            record_id in self.services.vectors.get([record_id], None),
        )


def make_stack(
    tmp_path: Path,
    extractor: SignatureExtractor,
    hashes: HashIndex,
    **settings: Any,
) -> Stack:
    """A bucket on moto, Milvus Lite in ``tmp_path`` and ``hashes``, composed like bootstrap does;
    ``settings`` override the defaults."""
    bucket = f"gallery-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    config = replace(Settings(data_dir=tmp_path, bucket=bucket), **settings)
    calls: list[str] = []
    s3.meta.events.register(
        "before-call.s3.GetObject", lambda params, **_: calls.append(params.get("url_path", "")), unique_id="count"
    )
    objects = S3ObjectStore(bucket, client=s3)
    vectors = MilvusVectorIndex(uri=str(tmp_path / "vectors.db"), dimension=extractor.model.dimension)
    indexer = IndexService(extractor, hashes, vectors, bucket=bucket)
    searcher = SearchService(
        extractor,
        hashes,
        vectors,
        bucket=bucket,
        owner_prefix=config.owner_prefix,
        defaults=config.thresholds,
        objects=objects,
    )
    services = Services(config, indexer, searcher, objects, hashes, vectors)
    return Stack(services, s3, bucket, calls)


def opensearch_hashes(url: str) -> HashIndex:
    from lookalike.adapters.opensearch_hashes import OpenSearchHashIndex, opensearch_client

    index = OpenSearchHashIndex(opensearch_client(url), f"images-{uuid.uuid4().hex[:8]}", refresh=True)
    index.ensure_index()
    return index


@pytest.fixture(params=["sqlite", "opensearch"])
def hash_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HashIndex]:
    """Each hash index backend in turn (SQLite, and OpenSearch on an osmem clone)."""
    if request.param == "sqlite":
        yield SqliteHashIndex(tmp_path / "hashes.sqlite")
        return
    server = request.getfixturevalue("osmem_server")
    with server.clone() as clone:
        yield opensearch_hashes(clone.url)


@pytest.fixture
def stack(aws: str, tmp_path: Path, extractor: SignatureExtractor, hash_backend: HashIndex) -> Iterator[Stack]:
    built = make_stack(tmp_path, extractor, hash_backend)
    yield built
    built.services.close()


# --- Events, generated like S3 and SQS write them -------------------------------------------


def s3_notification(
    bucket: str,
    key: str,
    event_name: str = "ObjectCreated:Put",
    *,
    size: int | None = None,
    etag: str | None = None,
    sequencer: str | None = None,
) -> dict[str, Any]:
    """An S3 event notification; the key URL-encoded form style, as S3 sends it."""
    stored: dict[str, Any] = {"key": quote_plus(key, safe="/"), "sequencer": sequencer or uuid.uuid4().hex.upper()}
    if size is not None:
        stored["size"] = size
    if etag is not None:
        stored["eTag"] = etag
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": REGION,
                "eventTime": "2026-11-22T10:00:00.000Z",
                "eventName": event_name,
                "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
                "requestParameters": {"sourceIPAddress": "203.0.113.7"},
                "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810"},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "uploads",
                    "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A3NL1KOZZKExample"}},
                    "object": stored,
                },
            }
        ]
    }


def sqs_event(*bodies: dict[str, Any] | str) -> dict[str, Any]:
    """An SQS batch, one message per body (a str body is sent verbatim, malformed or not)."""
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": uuid.uuid4().hex,
                "body": body if isinstance(body, str) else json.dumps(body),
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1795000000000"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:lookalike-uploads",
                "awsRegion": REGION,
            }
            for body in bodies
        ]
    }


def load_event(name: str) -> dict[str, Any]:
    """A sample event from ``events/`` by file name (the ones ``sam local invoke`` uses)."""
    event: dict[str, Any] = json.loads((EVENTS_DIR / name).read_text())
    return event


def load_handler(function: str) -> ModuleType:
    """A Lambda function's ``app.py``, imported from its own folder as SAM packages it."""
    path = REPO_ROOT / "functions" / function / "app.py"
    spec = importlib.util.spec_from_file_location(f"{function}_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class FakeLambdaContext:
    function_name: str = "lookalike-test"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:lookalike-test"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


# --- Images ----------------------------------------------------------------------------------


def photo_bytes(path: Path, max_side: int = 320) -> bytes:
    """A dataset photo re-encoded small, to keep the tests quick."""
    with Image.open(path) as image:
        image.thumbnail((max_side, max_side))
        return jpeg(image)

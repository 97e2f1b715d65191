"""The upload-event indexer: SQS batches of S3 notifications converge the indexes to the bucket.

Driven through the Lambda handler (Powertools decorators and all) against S3 on moto, Milvus
Lite, and each hash index backend (SQLite, OpenSearch on osmem).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from botocore.config import Config

from lookalike.adapters.s3_objects import S3ObjectStore
from lookalike.adapters.sqlite_hashes import SqliteHashIndex
from lookalike.errors import StoreUnavailable
from lookalike.identity import content_sha256, image_id
from lookalike.ports import HashIndex, ImageRecord
from lookalike.settings import Settings
from lookalike.signatures import SignatureExtractor
from tests.functional.conftest import (
    FakeLambdaContext,
    Stack,
    free_port,
    load_event,
    load_handler,
    make_stack,
    photo_bytes,
    s3_notification,
    sqs_event,
)

OWNER = "ann"


@pytest.fixture(scope="module")
def indexer_app() -> ModuleType:
    return load_handler("indexer")


@pytest.fixture
def deliver(indexer_app: ModuleType, stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Send an SQS event to the indexer Lambda handler; returns the ids SQS must deliver again."""
    monkeypatch.setattr(indexer_app, "services_from_env", lambda: stack.services)

    def send(event: dict[str, Any]) -> list[str]:
        response = indexer_app.handler(event, FakeLambdaContext())
        return [failure["itemIdentifier"] for failure in response["batchItemFailures"]]

    return send


@pytest.fixture
def images(photos: list[Path]) -> list[bytes]:
    return [photo_bytes(path) for path in photos[:4]]


def created(stack: Stack, key: str, data: bytes) -> dict[str, Any]:
    """Put the object in the bucket and return its ObjectCreated notification."""
    stored = stack.put(key, data)
    return s3_notification(stack.bucket, key, size=stored["size"], etag=stored["eTag"])


def record_of(stack: Stack, key: str) -> ImageRecord | None:
    record_id = image_id(stack.bucket, key)
    return stack.services.hashes.get([record_id], None).get(record_id)


@pytest.mark.parametrize(
    "name", ["red flower.jpg", "a+b=c.jpg", "café/日本 写真.jpg", "o'brien's dog.jpg", "100% sure?.jpg"]
)
def test_keys_round_trip_through_url_encoding(stack: Stack, deliver: Any, images: list[bytes], name: str) -> None:
    key = f"users/{OWNER}/{name}"

    assert deliver(sqs_event(created(stack, key, images[0]))) == []

    record = record_of(stack, key)
    assert record is not None and record.key == key and record.owner == OWNER
    assert stack.indexed(key) == (True, True)


def test_the_same_event_three_times_leaves_one_entry_per_store(stack: Stack, deliver: Any, images: list[bytes]) -> None:
    key = f"users/{OWNER}/once.jpg"
    notification = created(stack, key, images[0])

    assert deliver(sqs_event(notification, notification)) == []  # twice in one batch
    first = record_of(stack, key)
    assert deliver(sqs_event(notification)) == []  # and once more, later

    assert stack.services.hashes.count(OWNER) == 1
    assert stack.services.vectors.count(OWNER) == 1
    assert first is not None and record_of(stack, key) == first  # unchanged: not even re-written


def test_a_delete_delivered_before_its_create_ends_with_the_object_indexed(
    stack: Stack, deliver: Any, images: list[bytes]
) -> None:
    key = f"users/{OWNER}/reordered.jpg"
    create = created(stack, key, images[0])
    remove = s3_notification(stack.bucket, key, "ObjectRemoved:Delete")

    assert deliver(sqs_event(remove)) == []  # the delete of something never indexed succeeds
    assert deliver(sqs_event(create)) == []

    assert stack.indexed(key) == (True, True)


def test_a_late_create_does_not_resurrect_a_deleted_object(stack: Stack, deliver: Any, images: list[bytes]) -> None:
    key = f"users/{OWNER}/gone.jpg"
    create = created(stack, key, images[0])
    assert deliver(sqs_event(create)) == []
    stack.delete(key)

    assert deliver(sqs_event(s3_notification(stack.bucket, key, "ObjectRemoved:Delete"))) == []
    assert deliver(sqs_event(create)) == []  # the ObjectCreated comes again, late

    assert stack.indexed(key) == (False, False)


def test_a_late_remove_re_indexes_the_object_written_since(stack: Stack, deliver: Any, images: list[bytes]) -> None:
    key = f"users/{OWNER}/again.jpg"
    assert deliver(sqs_event(created(stack, key, images[0]))) == []
    stack.delete(key)
    stack.put(key, images[1])

    assert deliver(sqs_event(s3_notification(stack.bucket, key, "ObjectRemoved:Delete"))) == []

    record = record_of(stack, key)
    assert record is not None and record.sha256 == content_sha256(images[1])


def test_an_overwrite_replaces_the_old_image(stack: Stack, deliver: Any, images: list[bytes]) -> None:
    key = f"users/{OWNER}/overwritten.jpg"
    old, new = images[0], images[1]
    assert deliver(sqs_event(created(stack, key, old))) == []

    assert deliver(sqs_event(created(stack, key, new))) == []

    result = stack.services.searcher.search_image(old, OWNER)
    assert all(hit.key != key for hit in [*result.exact, *result.duplicates])
    record = record_of(stack, key)
    assert record is not None and record.sha256 == content_sha256(new) != content_sha256(old)
    assert stack.services.hashes.count(OWNER) == stack.services.vectors.count(OWNER) == 1


def test_poison_messages_are_acknowledged_and_logged_once(
    stack: Stack, deliver: Any, images: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    good, corrupt, truncated = f"users/{OWNER}/good.jpg", f"users/{OWNER}/corrupt.jpg", f"users/{OWNER}/cut.jpg"
    batch = sqs_event(
        created(stack, good, images[0]),
        created(stack, corrupt, b"\xff\xd8\xff\xe0 this is not really a JPEG" * 10),
        created(stack, truncated, images[1][: len(images[1]) // 2]),
        "{not json",
        {"Records": [{"eventName": "ObjectCreated:Put"}]},  # JSON, but not an S3 notification
    )

    with caplog.at_level(logging.INFO, logger="lookalike"):
        failures = deliver(batch)

    assert failures == []
    assert stack.indexed(good) == (True, True)
    assert stack.indexed(corrupt) == stack.indexed(truncated) == (False, False)
    rejections = [r for r in caplog.records if r.getMessage() == "image rejected"]
    assert sorted(r.key for r in rejections) == sorted([corrupt, truncated])  # type: ignore[attr-defined]
    assert {r.reason for r in rejections} <= {"corrupt", "truncated", "not_an_image"}  # type: ignore[attr-defined]
    assert len([r for r in caplog.records if r.getMessage() == "malformed message acknowledged"]) == 2


def test_a_rejected_overwrite_removes_the_old_entries(stack: Stack, deliver: Any, images: list[bytes]) -> None:
    key = f"users/{OWNER}/replaced-by-junk.jpg"
    assert deliver(sqs_event(created(stack, key, images[0]))) == []

    assert deliver(sqs_event(created(stack, key, b"GIF89a but nothing else"))) == []

    assert stack.indexed(key) == (False, False)


def test_s3_test_event_and_foreign_keys_are_acknowledged(stack: Stack, deliver: Any, images: list[bytes]) -> None:
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": stack.bucket, "RequestId": "X"}
    outside = created(stack, "elsewhere/photo.jpg", images[0])
    other_bucket = s3_notification("someone-elses-bucket", f"users/{OWNER}/x.jpg")

    assert deliver(sqs_event(test_event, outside, other_bucket)) == []

    assert stack.services.hashes.count() == stack.services.vectors.count() == 0


def test_an_oversized_object_is_never_downloaded(
    aws: str,
    tmp_path: Path,
    extractor: SignatureExtractor,
    indexer_app: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    photos: list[Path],
) -> None:
    stack = make_stack(tmp_path, extractor, SqliteHashIndex(tmp_path / "hashes.sqlite"), max_object_bytes=20_000)
    monkeypatch.setattr(indexer_app, "services_from_env", lambda: stack.services)
    key = f"users/{OWNER}/big.jpg"
    small = photo_bytes(photos[0], 64)
    indexer_app.handler(sqs_event(created(stack, key, small)), FakeLambdaContext())
    assert stack.indexed(key) == (True, True)
    stack.get_object_calls.clear()

    big = created(stack, key, small + b"\0" * 30_000)  # the old image is gone: a 30 kB object replaced it
    response = indexer_app.handler(sqs_event(big), FakeLambdaContext())

    assert response["batchItemFailures"] == []
    assert stack.get_object_calls == []
    assert stack.indexed(key) == (False, False)
    stack.services.close()


class FailingOnce:
    """A real hash index whose first upsert fails, like a store dropping out mid-batch."""

    def __init__(self, inner: HashIndex) -> None:
        self.inner = inner
        self.failures = 1

    def upsert(self, records: Sequence[ImageRecord]) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("the hash index went away")
        self.inner.upsert(records)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_store_failing_halfway_is_retried_and_both_stores_converge(
    stack: Stack, deliver: Any, images: list[bytes]
) -> None:
    flaky = FailingOnce(stack.services.hashes)
    stack.services.indexer.hashes = flaky
    keys = [f"users/{OWNER}/{n}.jpg" for n in ("one", "two")]
    batch = sqs_event(*(created(stack, key, data) for key, data in zip(keys, images, strict=False)))
    unrelated = sqs_event(s3_notification(stack.bucket, f"users/{OWNER}/never-existed.jpg", "ObjectRemoved:Delete"))
    batch["Records"] += unrelated["Records"]

    failures = deliver(batch)

    assert sorted(failures) == sorted(r["messageId"] for r in batch["Records"][:2])  # not the delete
    redelivered = {"Records": [r for r in batch["Records"] if r["messageId"] in failures]}
    assert deliver(redelivered) == []
    assert [stack.indexed(key) for key in keys] == [(True, True), (True, True)]
    assert stack.services.hashes.count(OWNER) == stack.services.vectors.count(OWNER) == 2


def test_s3_unavailable_is_reported_for_every_message_naming_the_key(
    stack: Stack, deliver: Any, images: list[bytes]
) -> None:
    key = f"users/{OWNER}/unreachable.jpg"
    notification = created(stack, key, images[0])
    dead = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    working = stack.services.objects
    stack.services.objects = S3ObjectStore(stack.bucket, client=dead)
    batch = sqs_event(notification, notification)

    failures = deliver(batch)

    assert sorted(failures) == sorted(r["messageId"] for r in batch["Records"])
    stack.services.objects = working
    assert deliver(batch) == []
    assert stack.indexed(key) == (True, True)


def test_a_batch_is_embedded_together(stack: Stack, deliver: Any, images: list[bytes]) -> None:
    calls: list[int] = []
    model = stack.services.indexer.extractor.model
    original = model.embed_batch

    def counting(batch: Sequence[Any]) -> Any:
        calls.append(len(batch))
        return original(batch)

    model.embed_batch = counting  # type: ignore[method-assign,assignment]
    try:
        keys = [f"users/{OWNER}/batch-{i}.jpg" for i in range(len(images))]
        assert deliver(sqs_event(*(created(stack, k, d) for k, d in zip(keys, images, strict=True)))) == []
    finally:
        del model.embed_batch
    assert calls == [len(images)]


@pytest.mark.parametrize("hash_backend", ["sqlite"], indirect=True)
def test_with_an_idempotency_table_a_duplicate_notification_is_not_downloaded_again(
    stack: Stack, deliver: Any, images: list[bytes]
) -> None:
    table = f"idempotency-{stack.bucket}"
    boto3.client("dynamodb").create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    stack.services.settings = Settings(data_dir=stack.settings.data_dir, bucket=stack.bucket, idempotency_table=table)
    key = f"users/{OWNER}/dedup.jpg"
    notification = created(stack, key, images[0])

    assert deliver(sqs_event(notification)) == []
    stack.get_object_calls.clear()
    assert deliver(sqs_event(notification)) == []  # S3 sent it twice

    assert stack.get_object_calls == []
    assert stack.indexed(key) == (True, True)
    items = boto3.client("dynamodb").scan(TableName=table)["Items"]
    assert [item["status"]["S"] for item in items] == ["COMPLETED"]


def retarget(event: dict[str, Any], bucket: str) -> dict[str, Any]:
    """A sample event with its S3 bucket renamed to this test's bucket; nothing else changes."""
    for record in event["Records"]:
        body = json.loads(record["body"])
        for notification in body.get("Records", []):
            notification["s3"]["bucket"]["name"] = bucket
        if "Bucket" in body:
            body["Bucket"] = bucket
        record["body"] = json.dumps(body)
    return event


SAMPLE_KEYS = ["users/alice/red flower.jpg", "users/alice/l'été à Paris 1+1.jpg"]  # as events/ encodes them


def test_the_sample_put_and_delete_events_converge(stack: Stack, deliver: Any, images: list[bytes]) -> None:
    for key, data in zip(SAMPLE_KEYS, images, strict=False):
        stack.put(key, data)

    assert deliver(retarget(load_event("sqs-s3-put.json"), stack.bucket)) == []
    assert [stack.indexed(key) for key in SAMPLE_KEYS] == [(True, True), (True, True)]
    assert deliver(retarget(load_event("sqs-s3-overwrite.json"), stack.bucket)) == []
    assert stack.services.hashes.count("alice") == stack.services.vectors.count("alice") == 2

    for key in SAMPLE_KEYS:
        stack.delete(key)
    assert deliver(retarget(load_event("sqs-s3-delete.json"), stack.bucket)) == []
    assert [stack.indexed(key) for key in SAMPLE_KEYS] == [(False, False), (False, False)]


@pytest.mark.parametrize("hash_backend", ["sqlite"], indirect=True)
def test_the_sample_expiration_and_test_events_are_acknowledged(
    stack: Stack, deliver: Any, images: list[bytes]
) -> None:
    key = SAMPLE_KEYS[0]
    stack.put(key, images[0])
    assert deliver(retarget(load_event("sqs-s3-put.json"), stack.bucket)) == []
    stack.delete(key)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Powertools warns of an invocation that publishes no metric
        assert deliver(retarget(load_event("sqs-s3-test-event.json"), stack.bucket)) == []
    assert stack.indexed(key) == (True, True)  # a test event changes nothing
    assert deliver(retarget(load_event("sqs-s3-lifecycle-expiration.json"), stack.bucket)) == []
    assert stack.indexed(key) == (False, False)

"""Backfill: a bucket that already holds images is indexed through the upload-event path.

Locally against the folder store, SQLite and Milvus Lite; in the cloud shape against S3 and SQS on
a moto server, with the queued messages then handed to the indexer's own batch path.
"""

from __future__ import annotations

import gzip
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import boto3
import pytest

from lookalike.adapters.local_objects import LocalObjectStore
from lookalike.adapters.s3_objects import S3ObjectStore
from lookalike.bootstrap import Services, build_services
from lookalike.edges.upload_events import handle_upload_events
from lookalike.embedding import FeatureModel
from lookalike.errors import ConfigurationError
from lookalike.identity import content_sha256, image_id
from lookalike.lifecycle.backfill import (
    BackfillState,
    LocalSink,
    QueueSink,
    TokenBucket,
    load_state,
    objects_after,
    run_backfill,
    sink_for,
)
from lookalike.lifecycle.cli import backfill_main
from lookalike.lifecycle.listing import LOCAL_TIMESTAMP_SLACK, ListedObject, inventory_objects, list_objects
from lookalike.lifecycle.reconcile import reconcile
from lookalike.settings import Settings
from lookalike.signatures import SignatureExtractor
from tests.conftest import REPO_ROOT
from tests.functional.conftest import photo_bytes, sqs_event

OWNER = "ann"
INT8_MODEL = REPO_ROOT / "layers" / "model" / "build" / "vgg16-gmp-int8.onnx"


@pytest.fixture(scope="module")
def images(photos: list[Path]) -> list[bytes]:
    return [photo_bytes(path, max_side=160) for path in photos[:12]]


@pytest.fixture
def local(tmp_path: Path, extractor: SignatureExtractor) -> Iterator[Services]:
    services = build_services(Settings(data_dir=tmp_path), extractor=extractor)
    yield services
    services.close()


class CountingGets(LocalObjectStore):
    """The folder store, counting downloads."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.downloads: list[str] = []

    def get(self, key: str) -> bytes:
        self.downloads.append(key)
        return super().get(key)


def ids_in(services: Services) -> tuple[set[str], set[str]]:
    return {r.id for r in services.hashes.scan()}, {i for i, _ in services.vectors.scan_ids()}


def backfill(services: Services, state: BackfillState | None = None, **options: Any) -> BackfillState:
    """Backfill the local gallery. It starts after the last upload's timestamp slack has passed, as
    a real indexer sees uploads seconds after they land: records then postdate their objects."""
    time.sleep(LOCAL_TIMESTAMP_SLACK)
    state = state or BackfillState(services.objects.bucket, "users/", "list", "live")
    return run_backfill(
        objects_after(services.objects, state.prefix, state), sink_for(services, "live"), state, **options
    )


def test_backfill_indexes_the_gallery_through_the_upload_path(local: Services, images: list[bytes]) -> None:
    keys = [f"users/{OWNER}/red flower {i}+1.jpg" for i in range(3)]
    for key, data in zip(keys, images, strict=False):
        local.objects.put(key, data)
    local.objects.put(f"users/{OWNER}/notes.txt", b"not an image")
    local.objects.put("elsewhere/stray.jpg", images[3])  # outside the owners' layout: never indexed

    state = backfill(local)

    records, vectors = ids_in(local)
    assert records == vectors == {image_id(local.objects.bucket, key) for key in keys}
    assert {r.key for r in local.hashes.scan()} == set(keys)  # keys survived the URL-encoding round trip
    assert state.counts["indexed"] == 3 and state.counts["rejected"] == 1
    assert state.finished and state.position == 4


def test_a_second_backfill_skips_indexed_images_without_downloading_them(
    tmp_path: Path, extractor: SignatureExtractor, images: list[bytes]
) -> None:
    counting = CountingGets(tmp_path / "objects")
    services = build_services(Settings(data_dir=tmp_path), objects=counting, extractor=extractor)
    keys = [f"users/{OWNER}/{i}.jpg" for i in range(4)]
    for key, data in zip(keys, images, strict=False):
        counting.put(key, data)
    backfill(services)
    counting.downloads.clear()
    counting.put(keys[0], images[5])  # overwritten since: must be sent again

    state = backfill(services)

    assert counting.downloads == [keys[0]]
    assert state.counts["skipped"] == 3 and state.counts["indexed"] == 1
    record = services.indexer.lookup(keys[0])
    assert record is not None and record.sha256 == content_sha256(images[5])
    services.close()


# --- The cloud shape: S3 and SQS on moto --------------------------------------------------------


@pytest.fixture
def cloud(aws: str, tmp_path: Path, extractor: SignatureExtractor) -> Iterator[tuple[Services, Any, str]]:
    """Services on an S3 bucket (embedded indexes), and an SQS queue standing for the indexer's."""
    bucket = f"gallery-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    sqs = boto3.client("sqs")
    queue_url = sqs.create_queue(QueueName=f"index-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    services = build_services(
        Settings(data_dir=tmp_path, bucket=bucket), objects=S3ObjectStore(bucket, client=s3), extractor=extractor
    )
    yield services, sqs, queue_url
    services.close()


def queue_sink(services: Services, sqs: Any, queue_url: str, **options: Any) -> QueueSink:
    return QueueSink(
        sqs,
        queue_url,
        hashes=services.hashes,
        bucket=services.objects.bucket,
        owner_prefix="users/",
        model=services.indexer.extractor.model.name,
        **options,
    )


def drain(sqs: Any, queue_url: str) -> list[str]:
    """Every message body in the queue (deleted as read)."""
    bodies: list[str] = []
    while messages := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
        bodies += [m["Body"] for m in messages]
        sqs.delete_message_batch(
            QueueUrl=queue_url, Entries=[{"Id": m["MessageId"], "ReceiptHandle": m["ReceiptHandle"]} for m in messages]
        )
    return bodies


def test_queued_messages_are_s3_notifications_the_indexer_converges(
    cloud: tuple[Services, Any, str], images: list[bytes]
) -> None:
    services, sqs, queue_url = cloud
    keys = [f"users/{OWNER}/{name}" for name in ("red flower.jpg", "a+b=c.jpg", "café/日本 写真.jpg")]
    for key, data in zip(keys, images, strict=False):
        services.objects.put(key, data)
    state = BackfillState(services.objects.bucket, "users/", "list", "live")

    run_backfill(objects_after(services.objects, "users/", state), queue_sink(services, sqs, queue_url), state)
    bodies = drain(sqs, queue_url)

    notifications = [json.loads(body)["Records"][0] for body in bodies]
    assert [n["eventName"] for n in notifications] == ["ObjectCreated:Put"] * 3
    assert sorted(n["s3"]["object"]["key"] for n in notifications) == sorted(quote_plus(k, safe="/") for k in keys)
    assert all(n["s3"]["object"]["size"] > 0 and n["s3"]["object"]["eTag"] for n in notifications)
    assert handle_upload_events(sqs_event(*bodies), services) == {"batchItemFailures": []}
    assert {r.key for r in services.hashes.scan()} == set(keys)


def test_an_interrupted_backfill_resumes_after_its_last_batch(cloud: tuple[Services, Any, str], tmp_path: Path) -> None:
    services, sqs, queue_url = cloud
    keys = [f"users/{OWNER}/{i:03d}.jpg" for i in range(25)]
    for key in keys:
        services.objects.put(key, b"bytes of " + key.encode())  # the queue does not look inside
    path = tmp_path / "state.json"
    fresh = BackfillState(services.objects.bucket, "users/", "list", "live")
    sink = queue_sink(services, sqs, queue_url)
    real_send, calls = sink.send, Counter[str]()

    def send_then_crash(batch: Sequence[ListedObject]) -> Counter[str]:
        calls["send"] += 1
        if calls["send"] == 2:
            raise KeyboardInterrupt
        return real_send(batch)

    sink.send = send_then_crash  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        run_backfill(objects_after(services.objects, "users/", fresh), sink, fresh, state_path=path)
    saved = load_state(path, fresh)
    assert (saved.position, saved.after, saved.finished) == (10, keys[9], False)

    sink.send = real_send  # type: ignore[method-assign]
    final = run_backfill(objects_after(services.objects, "users/", saved), sink, saved, state_path=path)

    sent = [json.loads(body)["Records"][0]["s3"]["object"]["key"] for body in drain(sqs, queue_url)]
    assert sorted(sent) == keys  # each once: nothing lost, nothing repeated
    assert final.finished and final.position == 25 and final.counts["sent"] == 25


def test_a_state_file_of_another_backfill_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"bucket": "a", "prefix": "users/", "source": "list", "model": "live"}))

    with pytest.raises(ConfigurationError, match="another backfill"):
        load_state(path, BackfillState("b", "users/", "list", "live"))


def test_back_pressure_waits_while_the_queue_is_too_deep(cloud: tuple[Services, Any, str]) -> None:
    services, sqs, queue_url = cloud
    for i in range(5):
        sqs.send_message(QueueUrl=queue_url, MessageBody=f"earlier upload {i}")
    services.objects.put(f"users/{OWNER}/late.jpg", b"x")
    waits: list[int] = []

    def indexer_catches_up(seconds: float) -> None:
        drain(sqs, queue_url)  # the indexer consumes while the backfill waits

    sink = queue_sink(services, sqs, queue_url, max_queue_depth=3, sleep=indexer_catches_up, on_wait=waits.append)
    state = BackfillState(services.objects.bucket, "users/", "list", "live")

    run_backfill(objects_after(services.objects, "users/", state), sink, state)

    assert waits == [5]  # waited once, seeing five messages
    assert sink.queue_depth() == 1  # then sent its own


def test_the_token_bucket_holds_the_average_rate() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    bucket = TokenBucket(rate=20, clock=lambda: now[0], sleep=sleep)
    for _ in range(30):
        bucket.take(10)  # 300 messages: a burst of 20, then 20 a second

    assert now[0] == pytest.approx((300 - 20) / 20)


# --- S3 Inventory -------------------------------------------------------------------------------


def write_inventory(folder: Path, rows: list[list[str]]) -> Path:
    """An inventory report as `aws s3 sync` of its folder lays it out: manifest and data/."""
    (folder / "2026-11-21T00-00Z").mkdir(parents=True)
    (folder / "data").mkdir()
    data = "".join(",".join(f'"{v}"' for v in row) + "\n" for row in rows).encode()
    (folder / "data" / "part-0.csv.gz").write_bytes(gzip.compress(data))
    manifest = {
        "sourceBucket": "gallery",
        "destinationBucket": "arn:aws:s3:::inventories",
        "fileFormat": "CSV",
        "fileSchema": "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size, LastModifiedDate, ETag",
        "files": [{"key": "inv/gallery/all/data/part-0.csv.gz", "size": 1, "MD5checksum": ""}],
    }
    path = folder / "2026-11-21T00-00Z" / "manifest.json"
    path.write_text(json.dumps(manifest))
    return path


def test_an_inventory_report_lists_current_objects_with_decoded_keys(tmp_path: Path) -> None:
    when = "2026-11-20T10:00:00.000Z"
    manifest = write_inventory(
        tmp_path,
        [
            ["gallery", "users/ann/red+flower.jpg", "v2", "true", "false", "120", when, "e1"],
            ["gallery", "users/ann/red+flower.jpg", "v1", "false", "false", "99", when, "e0"],  # noncurrent
            ["gallery", "users/ann/gone.jpg", "v3", "true", "true", "", when, ""],  # delete marker
            ["gallery", "users/ann/caf%C3%A9+%2B1.jpg", "v4", "true", "false", "7", when, "e2"],
            ["gallery", "elsewhere/x.jpg", "v5", "true", "false", "7", when, "e3"],
        ],
    )

    listed = list(inventory_objects(str(manifest), prefix="users/"))
    resumed = list(inventory_objects(str(manifest), prefix="users/", skip=1))

    assert [(o.key, o.size, o.version_id) for o in listed] == [
        ("users/ann/red flower.jpg", 120, "v2"),
        ("users/ann/café +1.jpg", 7, "v4"),
    ]
    assert listed[0].written_by is not None and listed[0].written_by > time.mktime((2026, 11, 20, 0, 0, 0, 0, 0, 0))
    assert resumed == listed[1:]


# --- A model change: dual write, backfill of the next model, switch -------------------------------


def test_a_model_change_dual_writes_backfills_the_next_collection_then_switches(
    tmp_path: Path, extractor: SignatureExtractor, images: list[bytes]
) -> None:
    next_extractor = SignatureExtractor(FeatureModel(INT8_MODEL, threads=2))
    before = Settings(data_dir=tmp_path)
    services = build_services(before, extractor=extractor)
    old_keys = [f"users/{OWNER}/old {i}.jpg" for i in range(3)]
    for key, data in zip(old_keys, images, strict=False):
        services.objects.put(key, data)
    backfill(services)
    services.close()

    # 1. The change starts: the indexer writes both models; searches still read the live one.
    during = replace(before, next_model_path=INT8_MODEL)
    services = build_services(during, extractor=extractor, next_extractor=next_extractor)
    assert services.next_model is not None
    new_key = f"users/{OWNER}/new.jpg"
    services.objects.put(new_key, images[4])
    backfill(services)  # stands for the upload event of new.jpg: the old ones are skipped as indexed
    next_ids = {i for i, _ in services.next_model.vectors.scan_ids()}
    assert next_ids == {image_id("local", new_key)}
    assert services.vectors.count() == 4

    # 2. The next collection is filled for the images indexed before the change.
    state = BackfillState("local", "users/", "list", "next")
    time.sleep(LOCAL_TIMESTAMP_SLACK)
    filled = run_backfill(objects_after(services.objects, "users/", state), sink_for(services, "next"), state)
    assert filled.counts["embedded"] == 3 and filled.counts["skipped"] == 1
    assert {i for i, _ in services.next_model.vectors.scan_ids()} == {r.id for r in services.hashes.scan()}
    entry = services.next_model.vectors.get([image_id("local", old_keys[0])], None)[image_id("local", old_keys[0])]
    assert entry.model == "vgg16-gmp-int8" and entry.sha256 == content_sha256(images[0])
    services.close()

    # 3. The switch: the next model becomes the live one and finds the images already there.
    after = replace(before, model_path=INT8_MODEL)
    services = build_services(after, extractor=next_extractor)
    assert services.vectors.count() == 4  # the collection named after the int8 model
    hits = services.searcher.search_image(images[1], OWNER).exact
    assert [h.key for h in hits] == [old_keys[1]]
    assert hits[0].similarity is not None and hits[0].similarity > 0.99  # its int8 vector was found

    # 4. Reconcile relabels the records (nothing embedded again), and then has nothing to do.
    report = reconcile(services)
    assert report.results == Counter(relabelled=4)
    assert {r.model for r in services.hashes.scan()} == {"vgg16-gmp-int8"}
    assert reconcile(services).nothing_to_do
    services.close()


def test_a_next_model_with_the_live_model_s_name_is_refused(tmp_path: Path, extractor: SignatureExtractor) -> None:
    settings = Settings(data_dir=tmp_path, next_model_path=tmp_path / "copy.onnx")

    with pytest.raises(ConfigurationError, match="name of its own"):
        build_services(settings, extractor=extractor, next_extractor=extractor)


def test_the_cli_backfills_and_reports(tmp_path: Path, images: list[bytes], capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(data_dir=tmp_path)
    LocalObjectStore(settings.objects_dir).put(f"users/{OWNER}/one.jpg", images[0])

    assert backfill_main(["--bucket", "local", "--rate", "100"], settings=settings) == 0

    assert "indexed 1" in capsys.readouterr().out
    assert (tmp_path / "backfill" / "local-live.json").exists()


def test_an_object_whose_write_time_is_unknown_is_left_to_the_indexer(local: Services, images: list[bytes]) -> None:
    local.objects.put(f"users/{OWNER}/a.jpg", images[0])
    backfill(local)
    listed = list(list_objects(local.objects, "users/"))

    assert LocalSink(local).pending(listed) == []  # written before it was indexed: skipped
    unknown = [replace(o, written_by=None) for o in listed]
    assert LocalSink(local).pending(unknown) == unknown  # no write time: the indexer decides by SHA-256

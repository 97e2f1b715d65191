"""Reconcile: every kind of drift between the bucket and the two indexes is found and repaired,
a dry run changes nothing, and a second run right after has nothing to do."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest

from lookalike.adapters.local_objects import LocalObjectStore
from lookalike.adapters.s3_objects import S3ObjectStore
from lookalike.bootstrap import Services, build_services
from lookalike.edges.upload_events import Notification, converge
from lookalike.identity import content_sha256, image_id
from lookalike.lifecycle import reconcile as reconciling
from lookalike.lifecycle.backfill import BackfillState, objects_after, run_backfill, sink_for
from lookalike.lifecycle.cli import reconcile_main
from lookalike.lifecycle.listing import LOCAL_TIMESTAMP_SLACK, TIMESTAMP_SLACK
from lookalike.lifecycle.reconcile import STATE_KEY, S3State, reconcile
from lookalike.ports import ImageRecord, StoredObject
from lookalike.settings import Settings
from lookalike.signatures import SignatureExtractor
from tests.functional.conftest import FakeLambdaContext, load_handler, photo_bytes

OWNER = "ann"


@pytest.fixture(scope="module")
def images(photos: list[Path]) -> list[bytes]:
    return [photo_bytes(path, max_side=128) for path in photos[:16]]


@pytest.fixture
def gallery(tmp_path: Path, extractor: SignatureExtractor) -> Iterator[Services]:
    services = build_services(Settings(data_dir=tmp_path), extractor=extractor)
    yield services
    services.close()


def key(name: str) -> str:
    return f"users/{OWNER}/{name}"


def index_all(services: Services) -> None:
    """Index the gallery as the indexer would, a little after the uploads (see test_backfill.backfill)."""
    time.sleep(LOCAL_TIMESTAMP_SLACK)
    state = BackfillState(services.objects.bucket, "users/", "list", "live")
    run_backfill(objects_after(services.objects, "users/", state), sink_for(services, "live"), state)


def entries(services: Services) -> tuple[dict[str, ImageRecord], dict[str, str]]:
    return {r.id: r for r in services.hashes.scan()}, dict(services.vectors.scan_ids())


def assert_converged(services: Services, *, foreign_vectors: frozenset[str] = frozenset()) -> None:
    """Both indexes hold exactly the bucket's images, each with its object's SHA-256 (and the vector
    index ``foreign_vectors``, another bucket's)."""
    bucket = services.objects.bucket
    images = {}
    for stored in services.objects.list("users/"):
        data = services.objects.get(stored.key)
        if stored.key.count("/") >= 2 and data[:2] == b"\xff\xd8" and len(data) <= services.settings.max_object_bytes:
            images[image_id(bucket, stored.key)] = content_sha256(data)
    records, vectors = entries(services)
    assert set(records) == set(vectors) - foreign_vectors == set(images)
    for record_id, sha256 in images.items():
        assert records[record_id].sha256 == vectors[record_id] == sha256


def test_every_kind_of_drift_is_planned_by_a_dry_run_then_repaired(
    gallery: Services, images: list[bytes], photos: list[Path]
) -> None:
    g = gallery
    bucket = g.objects.bucket
    names = ["vector-only.jpg", "record-only.jpg", "changed.jpg", "other-bytes.jpg", "gone.jpg", "fine.jpg"]
    for name, data in zip(names, images, strict=False):
        g.objects.put(key(name), data)
    g.objects.put(key("big.jpg"), photo_bytes(photos[15], max_side=480))
    index_all(g)
    # Drift, as lost events, half-done writes and stray writers leave it:
    g.objects.put(key("never-indexed.jpg"), images[8])
    g.objects.put(key("notes.txt"), b"not an image")
    g.hashes.delete([image_id(bucket, key("vector-only.jpg"))])
    g.vectors.delete([image_id(bucket, key("record-only.jpg"))])
    g.objects.put(key("changed.jpg"), images[9])
    other = g.vectors.get([image_id(bucket, key("fine.jpg"))], None)[image_id(bucket, key("fine.jpg"))]
    g.vectors.upsert([replace(other, id=image_id(bucket, key("other-bytes.jpg")), key=key("other-bytes.jpg"))])
    g.objects.delete(key("gone.jpg"))
    ghost = replace(other, id=image_id(bucket, key("ghost.jpg")), key=key("ghost.jpg"))
    stray = replace(other, id=image_id(bucket, "users/stray.jpg"), key="users/stray.jpg")
    foreign = replace(other, id=image_id("another-bucket", key("fine.jpg")))
    g.vectors.upsert([ghost, stray, foreign])
    g.settings = replace(g.settings, max_object_bytes=max(map(len, images)) + 1)  # big.jpg is now too large
    before = entries(g)

    plan = reconcile(g, dry_run=True)

    assert entries(g) == before  # a dry run changes nothing
    assert {f.key: f"{f.action}: {f.reason}" for f in plan.findings} == {
        key("never-indexed.jpg"): "index: not indexed",
        key("notes.txt"): "index: not indexed",
        key("vector-only.jpg"): "index: vector without record",
        key("record-only.jpg"): "repair: record without vector",
        key("changed.jpg"): "reindex: changed since indexed",
        key("other-bytes.jpg"): "repair: vector of other bytes",
        key("gone.jpg"): "delete: object gone",
        key("ghost.jpg"): "delete: object gone",
        "users/stray.jpg": "delete: outside the owners' layout",
        key("big.jpg"): "reindex: too large",
    }
    assert plan.unchanged["another bucket's entry"] == 1 and plan.unchanged["in sync"] == 1

    report = reconcile(g)

    assert report.results["rejected"] == 2 and report.results["failed"] == 0
    assert_converged(g, foreign_vectors=frozenset({foreign.id}))
    assert g.vectors.get([foreign.id], None)  # another bucket's entry was left alone
    again = reconcile(g)
    assert again.nothing_to_do, again.planned
    assert again.unchanged["known rejection"] == 1  # notes.txt is not downloaded again


class ListedBeforeTheUpload(LocalObjectStore):
    """A folder store whose listing was taken before ``late_key`` was uploaded again."""

    late_key = ""

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        return (o for o in super().list(prefix) if o.key != self.late_key)


def test_an_upload_landing_during_the_run_is_indexed_not_removed(
    tmp_path: Path, extractor: SignatureExtractor, images: list[bytes]
) -> None:
    objects = ListedBeforeTheUpload(tmp_path / "objects")
    services = build_services(Settings(data_dir=tmp_path), objects=objects, extractor=extractor)
    objects.put(key("late.jpg"), images[0])
    index_all(services)
    objects.put(key("late.jpg"), images[1])  # uploaded again after the listing (its event still queued)
    objects.late_key = key("late.jpg")

    report = reconcile(services)

    assert [f.reason for f in report.findings] == ["object gone"]  # what the listing said
    record = services.indexer.lookup(key("late.jpg"))
    assert record is not None and record.sha256 == content_sha256(images[1])  # the head said otherwise
    services.close()


def test_a_time_budget_stops_between_batches_and_the_next_run_resumes(gallery: Services, images: list[bytes]) -> None:
    for i, data in enumerate(images[:12]):
        gallery.objects.put(key(f"{i:02d}.jpg"), data)
    time.sleep(LOCAL_TIMESTAMP_SLACK)
    now = [0.0]
    index_many = gallery.indexer.index_many

    def slow_index_many(*args: Any, **kwargs: Any) -> Any:
        now[0] += 100  # each batch of repairs takes "100 seconds"
        return index_many(*args, **kwargs)

    gallery.indexer.index_many = slow_index_many  # type: ignore[method-assign]

    first = reconcile(gallery, deadline=50, clock=lambda: now[0])
    second = reconcile(gallery, deadline=now[0] + 1_000, clock=lambda: now[0])

    assert not first.complete and first.results["indexed"] == 10  # one batch, then the budget ran out
    assert second.complete and second.resumed_after and second.results["indexed"] == 2
    assert_converged(gallery)
    assert reconcile(gallery).nothing_to_do


def test_the_cli_prints_json_and_a_dry_run_exits_clean(
    tmp_path: Path, images: list[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(data_dir=tmp_path)
    LocalObjectStore(settings.objects_dir).put(key("a.jpg"), images[0])

    assert reconcile_main(["--dry-run", "--json"], settings=settings) == 0
    planned = json.loads(capsys.readouterr().out)
    assert reconcile_main([], settings=settings) == 0
    capsys.readouterr()
    assert reconcile_main(["--json"], settings=settings) == 0
    after = json.loads(capsys.readouterr().out)

    assert planned["dry_run"] and planned["planned"] == {"index: not indexed": 1}
    assert planned["findings"] == [
        {"key": key("a.jpg"), "id": image_id("local", key("a.jpg")), "action": "index", "reason": "not indexed"}
    ]
    assert after["planned"] == {} and after["left_alone"] == {"in sync": 1}


# --- On S3, as the scheduled function runs it -------------------------------------------------------


@pytest.fixture
def on_s3(aws: str, tmp_path: Path, extractor: SignatureExtractor) -> Iterator[Services]:
    bucket = f"gallery-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    services = build_services(
        Settings(data_dir=tmp_path, bucket=bucket), objects=S3ObjectStore(bucket, client=s3), extractor=extractor
    )
    yield services
    services.close()


@pytest.fixture(scope="module")
def reconciler_app() -> ModuleType:
    return load_handler("reconciler")


def test_the_scheduled_function_keeps_its_state_in_the_bucket_where_the_indexer_ignores_it(
    on_s3: Services, images: list[bytes], reconciler_app: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i, data in enumerate(images[:3]):
        on_s3.objects.put(key(f"{i}.jpg"), data)
    on_s3.objects.put(key("notes.txt"), b"not an image")
    time.sleep(TIMESTAMP_SLACK)  # S3's LastModified is whole seconds: index after they are surely past
    monkeypatch.setattr(reconciler_app, "services_from_env", lambda: on_s3)

    first = reconciler_app.handler({"source": "aws.events"}, FakeLambdaContext())
    second = reconciler_app.handler({"source": "aws.events"}, FakeLambdaContext())

    assert first["complete"] and first["results"] == {"indexed": 3, "rejected": 1}
    assert second["planned"] == {} and second["left_alone"] == {"in sync": 3, "known rejection": 1}
    assert_converged(on_s3)
    state = S3State(on_s3.objects.client, on_s3.objects.bucket).load()  # type: ignore[attr-defined]
    assert state["rejected"].keys() == {key("notes.txt")} and state["after_id"] == ""
    notification = Notification(on_s3.objects.bucket, STATE_KEY, "ObjectCreated:Put", "1")
    assert converge([notification], on_s3)[STATE_KEY].status == "ignored"


def test_reconcile_state_is_per_prefix_and_a_run_without_a_budget_starts_over(
    gallery: Services, images: list[bytes]
) -> None:
    store = reconciling.FileState(gallery.settings.data_dir / "state.json")
    store.save({"prefix": "users/", "after_id": "f" * 32, "rejected": {}})
    gallery.objects.put(key("a.jpg"), images[0])

    budgeted = reconcile(gallery, deadline=float("inf"), state=store, prefix="users/")
    assert budgeted.resumed_after == "f" * 32 and budgeted.nothing_to_do  # every id sorts before f...f

    full = reconcile(gallery, state=store)
    assert full.resumed_after == "" and full.results["indexed"] == 1


def test_an_identical_re_upload_is_verified_once_then_skipped(gallery: Services, images: list[bytes]) -> None:
    gallery.objects.put(key("same.jpg"), images[0])
    index_all(gallery)
    gallery.objects.put(key("same.jpg"), images[0])  # the same bytes again: a newer write time
    time.sleep(LOCAL_TIMESTAMP_SLACK)  # reconcile runs after the re-upload's timestamp slack

    first = reconcile(gallery)
    second = reconcile(gallery)

    assert [f.reason for f in first.findings] == ["changed since indexed"]
    assert first.results == {"unchanged": 1, "verified": 1}  # downloaded and hashed, not embedded
    assert second.nothing_to_do

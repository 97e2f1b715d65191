"""Convergence under chaos: whatever happens to the events and the stores, the indexes end up
matching the bucket once the queue is drained and reconcile has run once.

A hypothesis state machine puts, overwrites and deletes a few objects; each change emits the S3
notification S3 would send. Notifications are delivered late, out of order, twice, or never (a
lost event); either store fails on its next calls, so a delivery fails part-way and stays
pending, as SQS would deliver it again, until it is dead-lettered after a few attempts. At the
end the pending notifications are delivered with the stores healthy and reconcile runs once.
Then the hash index, the vector index and the bucket hold the same ids, and every entry carries
the SHA-256 of its object's bytes.

The images are 64x64 BMPs, all of the same byte size, so an overwrite whose event was lost can
only be told apart by its write time: the case the cheap "already indexed" check must get right.
Shrunk failures are kept in ``hypothesis-db/`` beside this file and replayed first on every run.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule
from PIL import Image
from pymilvus import MilvusClient

from lookalike.adapters.local_objects import LocalObjectStore
from lookalike.adapters.milvus import MilvusVectorIndex
from lookalike.adapters.sqlite_hashes import SqliteHashIndex
from lookalike.bootstrap import Services
from lookalike.edges.upload_events import handle_upload_events
from lookalike.errors import StoreUnavailable
from lookalike.identity import content_sha256, image_id
from lookalike.lifecycle.reconcile import reconcile
from lookalike.services import IndexService, SearchService
from lookalike.settings import Settings
from lookalike.signatures import SignatureExtractor
from tests.functional.conftest import s3_notification, sqs_event

KEYS = ("users/ann/a.bmp", "users/ann/b c.bmp", "users/bob/d+e.bmp", "users/bob/f.bmp")
MAX_DELIVERIES = 3  # then SQS moves the message to the dead-letter queue
EXAMPLES_DIR = Path(__file__).parent / "hypothesis-db"


def pattern(seed: int, side: int = 64) -> bytes:
    """A distinct picture per seed (blocks of random colours), as an uncompressed BMP."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(np.kron(blocks, np.ones((side // 4, side // 4, 1), dtype=np.uint8)))
    out = io.BytesIO()
    image.save(out, "BMP")
    return out.getvalue()


IMAGES = tuple(pattern(seed) for seed in range(4))


class Flaky:
    """A store that lets ``passes`` calls through, fails the next ``failures`` with StoreUnavailable,
    then works again: failing a later call of an operation leaves it half done."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.passes = 0
        self.failures = 0

    def fail(self, *, after: int, calls: int) -> None:
        self.passes, self.failures = after, calls

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not callable(attribute) or name == "close":
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.passes > 0:
                self.passes -= 1
            elif self.failures > 0:
                self.failures -= 1
                raise StoreUnavailable(f"injected failure of {type(self.inner).__name__}.{name}")
            return attribute(*args, **kwargs)

        return call


class Chaos(RuleBasedStateMachine):
    # Shared by every example: one model session, one Milvus Lite file (a collection per example).
    extractor: ClassVar[SignatureExtractor]
    milvus: ClassVar[MilvusClient]

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="lookalike-chaos-"))
        self.collection = f"chaos_{uuid.uuid4().hex[:12]}"
        self.objects = LocalObjectStore(self.root / "objects")
        self.hashes = Flaky(SqliteHashIndex(":memory:"))
        self.vectors = Flaky(
            MilvusVectorIndex(self.milvus, collection=self.collection, dimension=self.extractor.model.dimension)
        )
        config = Settings(data_dir=self.root)
        hashes: Any = self.hashes
        vectors: Any = self.vectors
        self.services = Services(
            config,
            IndexService(self.extractor, hashes, vectors, bucket=config.bucket),
            SearchService(
                self.extractor,
                hashes,
                vectors,
                bucket=config.bucket,
                owner_prefix=config.owner_prefix,
                defaults=config.thresholds,
                objects=self.objects,
            ),
            self.objects,
            hashes,
            vectors,
        )
        self.pending: list[tuple[dict[str, Any], int]] = []  # notification, deliveries so far

    # -- the bucket changes ------------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), image=st.integers(0, len(IMAGES) - 1))
    def put(self, key: str, image: int) -> None:
        stored = self.objects.put(key, IMAGES[image])
        self.pending.append((s3_notification("local", key, size=stored.size, etag=stored.etag), 0))

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: str) -> None:
        self.objects.delete(key)
        self.pending.append((s3_notification("local", key, "ObjectRemoved:Delete"), 0))

    # -- the queue misbehaves -------------------------------------------------------------------

    @precondition(lambda self: self.pending)
    @rule(pick=st.integers(0, 99), again=st.booleans())
    def deliver(self, pick: int, again: bool) -> None:
        """Deliver any pending notification (reordering); ``again``: it will come once more."""
        notification, deliveries = self.pending.pop(pick % len(self.pending))
        failed = handle_upload_events(sqs_event(notification), self.services)["batchItemFailures"]
        if again or (failed and deliveries + 1 < MAX_DELIVERIES):
            self.pending.append((notification, deliveries + 1))

    @precondition(lambda self: self.pending)
    @rule(pick=st.integers(0, 99))
    def lose(self, pick: int) -> None:
        self.pending.pop(pick % len(self.pending))

    # -- the stores misbehave -------------------------------------------------------------------

    @rule(after=st.integers(0, 2), calls=st.integers(1, 3))
    def break_hash_index(self, after: int, calls: int) -> None:
        self.hashes.fail(after=after, calls=calls)

    @rule(after=st.integers(0, 2), calls=st.integers(1, 3))
    def break_vector_index(self, after: int, calls: int) -> None:
        self.vectors.fail(after=after, calls=calls)

    # -- the end: drain, reconcile once, compare ---------------------------------------------------

    def teardown(self) -> None:
        try:
            self.hashes.fail(after=0, calls=0)
            self.vectors.fail(after=0, calls=0)
            for notification, _ in self.pending:
                handle_upload_events(sqs_event(notification), self.services)
            reconcile(self.services)
            self.check_converged()
        finally:
            self.milvus.drop_collection(self.collection)
            shutil.rmtree(self.root, ignore_errors=True)

    def check_converged(self) -> None:
        in_bucket = {image_id("local", o.key): content_sha256(self.objects.get(o.key)) for o in self.objects.list()}
        records = {r.id: r.sha256 for r in self.hashes.inner.scan()}
        vectors = dict(self.vectors.inner.scan_ids())
        assert records == in_bucket, "hash index != bucket"
        assert vectors == in_bucket, "vector index != bucket"


@pytest.fixture(scope="module", autouse=True)
def _shared_stores(feature_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    Chaos.extractor = SignatureExtractor(feature_model)
    Chaos.milvus = MilvusClient(str(tmp_path_factory.mktemp("chaos") / "vectors.db"))
    yield
    Chaos.milvus.close()


TestConvergence = Chaos.TestCase
TestConvergence.settings = settings(
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    database=DirectoryBasedExampleDatabase(EXAMPLES_DIR),
    suppress_health_check=[HealthCheck.too_slow],
)


def test_the_images_are_distinct_and_of_one_size() -> None:
    assert len({content_sha256(data) for data in IMAGES}) == len(IMAGES)
    assert len({len(data) for data in IMAGES}) == 1


# --- Sequences worth keeping as plain tests ---------------------------------------------------------


def test_a_lost_overwrite_by_an_image_of_the_same_size_is_repaired() -> None:
    """Only the write time tells this overwrite apart (found by the machine when reconcile's
    "changed since indexed" check was taken out)."""
    state = Chaos()
    state.put(key=KEYS[0], image=0)
    state.deliver(pick=0, again=False)
    state.put(key=KEYS[0], image=1)
    state.lose(pick=0)
    state.teardown()


def test_a_half_written_entry_whose_retries_are_lost_is_repaired() -> None:
    """The vector is written, the record is not (the hash index fails after its lookup), and the
    redelivery is lost; then the object is deleted and that delete fails on the vector index, and
    is lost too. Only reconcile can find the vector left behind, by id, with no record and no object."""
    state = Chaos()
    state.break_hash_index(after=1, calls=1)
    state.put(key=KEYS[1], image=2)
    state.deliver(pick=0, again=False)
    assert state.vectors.inner.count() == 1 and state.hashes.inner.count() == 0
    state.lose(pick=0)
    state.break_vector_index(after=0, calls=1)
    state.delete(key=KEYS[1])
    state.deliver(pick=0, again=False)
    state.lose(pick=0)
    assert state.vectors.inner.count() == 1 and not state.pending
    state.teardown()

"""Backfill: index a bucket that already holds images, through the path the uploads take.

The objects are listed (ListObjectsV2, or an S3 Inventory report for very large buckets) and each
one becomes the S3 ``ObjectCreated:Put`` notification an upload would have sent:

- in the cloud (``--queue-url``), the notifications go to the indexing queue, ten per
  SendMessageBatch, and the indexer Lambda converges them like any upload;
- locally, they are delivered straight to :func:`lookalike.edges.upload_events.converge` against
  the configured stores.

So there is one indexing path, with its checks (size limit, decoding, owner layout), and a key
that changes during a backfill converges to the bucket's state like any other.

Objects already indexed are skipped without a download by the cheap check of
:func:`lookalike.lifecycle.listing.looks_indexed` (a record of the live model, with the same size,
made after the object was written); the indexer's SHA-256 comparison stays the ground truth for
everything else. Sending is rate limited (a token bucket, in messages per second) and waits while
the queue is deeper than ``max_queue_depth`` (visible plus in-flight messages), so a backfill
never starves fresh uploads of the indexer's concurrency for long.

A state file records, after each batch, how far the source was consumed (the last key, and the
count of objects, in listing order); a run with the same state file resumes after it. A bucket
listing is in key order, so resuming is a ListObjectsV2 ``StartAfter``; an inventory report is
read again and the objects already done are passed over.

``--model next`` fills the next model's collection during a model change (docs/operations.md):
for each object whose live entry is current, the next model embeds it and its vector is written
to the next collection. It runs in this process, since the indexer's events skip what is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import quote_plus

from botocore.exceptions import BotoCoreError, ClientError

from lookalike.errors import ConfigurationError, NotFound, StoreUnavailable
from lookalike.files import write_atomically
from lookalike.identity import content_sha256, image_id
from lookalike.keys import owner_from_key
from lookalike.lifecycle.listing import ListedObject, looks_indexed
from lookalike.ports import VectorEntry
from lookalike.signatures import Signatures

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

    from lookalike.bootstrap import NextModel, Services
    from lookalike.ports import HashIndex, ImageRecord, ObjectStore

logger = logging.getLogger(__name__)

Target = Literal["live", "next"]

SQS_BATCH = 10  # SendMessageBatch takes ten messages at most
LOOKUP_CHUNK = 100  # objects looked up in the index per request
SEND_ATTEMPTS = 5
DEPTH_CHECK_SECONDS = 5.0  # how often the queue's depth is asked for
DEPTH_POLL_SECONDS = 15.0  # how long to wait before asking again while the queue is too deep
BACKFILL_PRINCIPAL = "lookalike-backfill"


# --- Notifications -------------------------------------------------------------------------------


def created_notification(bucket: str, listed: ListedObject, *, region: str = "") -> dict[str, Any]:
    """The S3 ``ObjectCreated:Put`` notification an upload of ``listed`` would have sent.

    The key is URL-encoded form style, as S3 writes it (``red flower.jpg`` → ``red+flower.jpg``,
    ``+`` → ``%2B``). With no version id the sequencer is derived from the ETag and size, so the
    indexer's idempotency ledger recognises a second backfill of unchanged content as a duplicate.
    """
    stored: dict[str, Any] = {"key": quote_plus(listed.key, safe="/"), "size": listed.size, "eTag": listed.etag}
    if listed.version_id:
        stored["versionId"] = listed.version_id
    content = hashlib.md5(f"{listed.etag}:{listed.size}".encode(), usedforsecurity=False)
    stored["sequencer"] = content.hexdigest()[:16].upper()
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": region,
                "eventTime": now,
                "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": BACKFILL_PRINCIPAL},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {"x-amz-request-id": BACKFILL_PRINCIPAL},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": BACKFILL_PRINCIPAL,
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": stored,
                },
            }
        ]
    }


# --- Pacing ----------------------------------------------------------------------------------------


class TokenBucket:
    """At most ``rate`` tokens a second on average, in bursts of at most ``burst``."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ConfigurationError(f"--rate must be positive, not {rate}")
        self.rate = rate
        self.burst = max(burst if burst is not None else rate, SQS_BATCH)
        self.clock = clock
        self.sleep = sleep
        self._tokens = self.burst
        self._at = clock()

    def take(self, count: int) -> None:
        """Wait until ``count`` tokens are there, then take them."""
        while True:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= count:
                self._tokens -= count
                return
            self.sleep((count - self._tokens) / self.rate)


# --- Where the notifications go -------------------------------------------------------------------


class Sink(Protocol):
    def pending(self, chunk: Sequence[ListedObject]) -> list[ListedObject]:
        """The objects of ``chunk`` that need the indexer: the others are skipped."""

    def send(self, batch: Sequence[ListedObject]) -> Counter[str]:
        """Hand over one batch (at most ten); raises StoreUnavailable when it could not."""


def _indexable(listed: ListedObject, owner_prefix: str) -> bool:
    return owner_from_key(listed.key, owner_prefix) is not None


class _LiveIndexCheck:
    """The cheap skip for the live model: a current record for the same bytes."""

    def __init__(self, hashes: HashIndex, bucket: str, owner_prefix: str, model: str) -> None:
        self.hashes = hashes
        self.bucket = bucket
        self.owner_prefix = owner_prefix
        self.model = model

    def pending(self, chunk: Sequence[ListedObject]) -> list[ListedObject]:
        candidates = [o for o in chunk if _indexable(o, self.owner_prefix)]
        records = self.hashes.get([image_id(self.bucket, o.key) for o in candidates], owner=None)
        return [o for o in candidates if not looks_indexed(o, records.get(image_id(self.bucket, o.key)), self.model)]


class QueueSink(_LiveIndexCheck):
    """Notifications to the indexing queue, with back-pressure on its depth."""

    def __init__(
        self,
        sqs: SQSClient,
        queue_url: str,
        *,
        hashes: HashIndex,
        bucket: str,
        owner_prefix: str,
        model: str,
        region: str = "",
        max_queue_depth: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_wait: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(hashes, bucket, owner_prefix, model)
        self.sqs = sqs
        self.queue_url = queue_url
        self.region = region
        self.max_queue_depth = max_queue_depth
        self.clock = clock
        self.sleep = sleep
        self.on_wait = on_wait
        self._checked_at = float("-inf")

    def send(self, batch: Sequence[ListedObject]) -> Counter[str]:
        self.wait_for_room()
        entries = {
            str(i): json.dumps(created_notification(self.bucket, listed, region=self.region))
            for i, listed in enumerate(batch)
        }
        for attempt in range(SEND_ATTEMPTS):
            failed = self._send_batch(entries)
            if not failed:
                return Counter(sent=len(batch))
            entries = {i: body for i, body in entries.items() if i in failed}
            self.sleep(0.2 * 2**attempt)
        raise StoreUnavailable(f"SQS refused {len(entries)} messages {SEND_ATTEMPTS} times: {sorted(failed.values())}")

    def _send_batch(self, entries: dict[str, str]) -> dict[str, str]:
        """Send; returns the ids of the messages SQS did not take, with its reasons."""
        try:
            response = self.sqs.send_message_batch(
                QueueUrl=self.queue_url, Entries=[{"Id": i, "MessageBody": body} for i, body in entries.items()]
            )
        except (ClientError, BotoCoreError) as exc:
            raise StoreUnavailable(f"SQS SendMessageBatch to {self.queue_url} failed: {exc}") from exc
        failed = {f["Id"]: f"{f['Code']}: {f.get('Message', '')}" for f in response.get("Failed", [])}
        permanent = [f for f in response.get("Failed", []) if f.get("SenderFault")]
        if permanent:  # a malformed request does not get better by trying again
            raise StoreUnavailable(f"SQS rejected messages as malformed: {failed}")
        return failed

    def wait_for_room(self) -> None:
        """Return when the queue holds at most ``max_queue_depth`` messages (asked every few seconds)."""
        if self.max_queue_depth is None or self.clock() - self._checked_at < DEPTH_CHECK_SECONDS:
            return
        while (depth := self.queue_depth()) > self.max_queue_depth:
            if self.on_wait is not None:
                self.on_wait(depth)
            self.sleep(DEPTH_POLL_SECONDS)
        self._checked_at = self.clock()

    def queue_depth(self) -> int:
        """Messages waiting plus messages being processed."""
        try:
            attributes = self.sqs.get_queue_attributes(
                QueueUrl=self.queue_url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
        except (ClientError, BotoCoreError) as exc:
            raise StoreUnavailable(f"cannot read the depth of {self.queue_url}: {exc}") from exc
        return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


class LocalSink(_LiveIndexCheck):
    """Notifications delivered in this process to the upload-event path, as SQS would deliver them:
    a key that failed transiently is delivered again, a few times."""

    def __init__(self, services: Services, *, sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(
            services.hashes,
            services.objects.bucket,
            services.settings.owner_prefix,
            services.indexer.extractor.model.name,
        )
        self.services = services
        self.sleep = sleep

    def send(self, batch: Sequence[ListedObject]) -> Counter[str]:
        from lookalike.edges.upload_events import converge, parse_message

        bodies = [json.dumps(created_notification(self.bucket, listed)) for listed in batch]
        notifications = [n for body in bodies for n in parse_message(body)]
        counts: Counter[str] = Counter()
        for attempt in range(SEND_ATTEMPTS):
            outcomes = converge(notifications, self.services)
            counts.update(o.status for o in outcomes.values() if o.status != "failed")
            failed = {key for key, outcome in outcomes.items() if outcome.status == "failed"}
            if not failed:
                return counts
            notifications = [n for n in notifications if n.key in failed]
            self.sleep(0.2 * 2**attempt)
        raise StoreUnavailable(f"{len(failed)} keys failed {SEND_ATTEMPTS} times: {sorted(failed)[:3]}")


class NextModelSink:
    """The next model's vectors, written straight to the next collection (``--model next``).

    Only for objects whose live entry is current (the record's SHA-256 is the object's): the next
    collection must hold the same images as the live one, and anything else is the live path's
    business (with dual write on, the indexer writes both when it indexes them).
    """

    def __init__(self, services: Services, next_model: NextModel) -> None:
        self.services = services
        self.next_model = next_model
        self.bucket = services.objects.bucket
        self.live_model = services.indexer.extractor.model.name
        self._records: dict[str, ImageRecord] = {}

    def pending(self, chunk: Sequence[ListedObject]) -> list[ListedObject]:
        prefix = self.services.settings.owner_prefix
        ids = {image_id(self.bucket, o.key): o for o in chunk if _indexable(o, prefix)}
        self._records = self.services.hashes.get(list(ids), owner=None)
        done = self.next_model.vectors.get(list(self._records), owner=None)
        pending = []
        for record_id, listed in ids.items():
            record = self._records.get(record_id)
            if record is None:
                continue  # not in the live index: nothing to shadow
            shadow = done.get(record_id)
            if shadow is None or shadow.sha256 != record.sha256 or not looks_indexed(listed, record, self.live_model):
                pending.append(listed)
        return pending

    def send(self, batch: Sequence[ListedObject]) -> Counter[str]:
        counts: Counter[str] = Counter()
        blobs: list[tuple[ImageRecord, bytes]] = []
        for listed in batch:
            record = self._records[image_id(self.bucket, listed.key)]
            try:
                data = self.services.objects.get(listed.key)
            except NotFound:
                counts["gone"] += 1
                continue
            if content_sha256(data) != record.sha256:
                counts["live entry stale"] += 1  # the live path re-indexes it, writing both models
                continue
            blobs.append((record, data))
        signatures = self.next_model.extractor.extract_many([data for _, data in blobs])
        entries = [
            VectorEntry(record.id, record.owner, record.key, sig.sha256, sig.model, sig.vector)
            for (record, _), sig in zip(blobs, signatures, strict=True)
            if isinstance(sig, Signatures)
        ]
        self.next_model.vectors.upsert(entries)
        counts["embedded"] += len(entries)
        counts["rejected"] += len(blobs) - len(entries)
        return counts


# --- State, for resuming ----------------------------------------------------------------------------


@dataclass
class BackfillState:
    """How far a backfill got; written after every batch so that an interrupted run resumes."""

    bucket: str
    prefix: str
    source: str  # "list", or the inventory manifest's location
    model: Target
    after: str = ""  # the last key done, in source order
    position: int = 0  # how many objects of the source are done
    counts: dict[str, int] = field(default_factory=dict)
    finished: bool = False

    def matches(self, other: BackfillState) -> bool:
        return (self.bucket, self.prefix, self.source, self.model) == (
            other.bucket,
            other.prefix,
            other.source,
            other.model,
        )


def load_state(path: Path | None, fresh: BackfillState) -> BackfillState:
    """The saved state of the same backfill, or ``fresh``; a state file of another backfill is refused."""
    if path is None or not path.exists():
        return fresh
    try:
        saved = BackfillState(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigurationError(f"unreadable backfill state {path}: {exc}") from exc
    if not saved.matches(fresh):
        raise ConfigurationError(
            f"{path} belongs to another backfill ({saved.bucket}/{saved.prefix}, {saved.source}, "
            f"model {saved.model}): remove it or pass another --state"
        )
    return saved


def save_state(path: Path, state: BackfillState) -> None:
    """Write the state whole or not at all (a temporary file renamed over the old one)."""
    write_atomically(path, json.dumps(asdict(state), indent=2).encode())


# --- The run ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    listed: int
    sent: int
    skipped: int
    last_key: str


def run_backfill(
    source: Iterable[ListedObject],
    sink: Sink,
    state: BackfillState,
    *,
    state_path: Path | None = None,
    limiter: TokenBucket | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> BackfillState:
    """Feed ``source`` (already positioned after ``state``) to ``sink``; returns the final state.

    The state advances (and is saved, when ``state_path`` is given) only once a batch is wholly
    sent, so an interruption resends at most one batch, which the indexer converges harmlessly.
    """
    counts = Counter(state.counts)

    def advance(last: ListedObject, consumed: int, outcome: Counter[str]) -> None:
        nonlocal state
        counts.update(outcome)
        state = replace(state, after=last.key, position=state.position + consumed, counts=dict(counts))
        if state_path is not None:
            save_state(state_path, state)
        if on_progress is not None:
            on_progress(Progress(state.position, counts["sent"], counts["skipped"], last.key))

    for chunk in _chunks(iter(source), LOOKUP_CHUNK):
        pending = {o.key for o in sink.pending(chunk)}
        batch: list[ListedObject] = []
        consumed = 0
        for listed in chunk:
            consumed += 1
            if listed.key not in pending:
                counts["skipped"] += 1
                continue
            batch.append(listed)
            if len(batch) == SQS_BATCH:
                advance(listed, consumed, _send(sink, batch, limiter))
                batch, consumed = [], 0
        if batch:
            advance(chunk[-1], consumed, _send(sink, batch, limiter))
        elif consumed:
            advance(chunk[-1], consumed, Counter())
    state = replace(state, finished=True, counts=dict(counts))
    if state_path is not None:
        save_state(state_path, state)
    return state


def _send(sink: Sink, batch: list[ListedObject], limiter: TokenBucket | None) -> Counter[str]:
    if limiter is not None:
        limiter.take(len(batch))
    outcome = sink.send(batch)
    outcome.setdefault("sent", len(batch))
    return outcome


def _chunks(items: Iterator[ListedObject], size: int) -> Iterator[list[ListedObject]]:
    while chunk := list(islice(items, size)):
        yield chunk


def sink_for(services: Services, target: Target) -> Sink:
    """The in-process sink for ``target`` (the queue sink is built by the CLI, which has the URL)."""
    if target == "live":
        return LocalSink(services)
    if services.next_model is None:
        raise ConfigurationError("--model next needs LOOKALIKE_NEXT_MODEL_PATH: no model change is under way")
    return NextModelSink(services, services.next_model)


def objects_after(objects: ObjectStore, prefix: str, state: BackfillState) -> Iterator[ListedObject]:
    """The bucket's objects under ``prefix`` that ``state`` has not done yet, in key order."""
    from lookalike.lifecycle.listing import list_objects

    return list_objects(objects, prefix, start_after=state.after)

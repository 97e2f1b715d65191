"""Upload events → index service: converge every key an SQS batch of S3 notifications names.

An S3 notification only says "this key changed". Notifications come duplicated, reordered and
late, so nothing in one is trusted beyond its bucket and key: each key named in a batch is
looked up in the bucket, and its index entries are made to match what is there *now*.

- missing object: its entries are deleted (deleting what was never indexed is a success);
- larger than ``max_object_bytes``: never downloaded, its entries deleted, reported as rejected;
- otherwise downloaded, and the batch's images indexed in one call (embedded together);
  an image the decoder rejects has its old entries deleted.

So a late ``ObjectCreated`` for an object deleted since does not bring it back, and a late
``ObjectRemoved`` for a key written again since re-indexes the current object. Only transient
failures (a store or S3 unavailable) go back to the queue, as batch item failures for every
message that names the key; anything else is acknowledged, and a poison message is logged
once and never retried.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import unquote_plus

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes import S3Event, SQSEvent

from lookalike.errors import ImageRejected, NotFound, StoreUnavailable
from lookalike.keys import owner_from_key
from lookalike.services.indexing import IndexRequest

if TYPE_CHECKING:
    from aws_lambda_powertools import Metrics
    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
    from aws_lambda_powertools.utilities.data_classes.s3_event import S3EventRecord
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from lookalike.bootstrap import Services
    from lookalike.settings import Settings

logger = logging.getLogger(__name__)

Status = Literal["indexed", "unchanged", "deleted", "rejected", "ignored", "failed"]

TEST_EVENT = "s3:TestEvent"
#: Idempotency records outlive S3's duplicate deliveries and SQS redeliveries by a wide margin.
IDEMPOTENCY_TTL_SECONDS = 24 * 3600
IDEMPOTENCY_KEY_PREFIX = "lookalike-upload-notification"

METRIC_NAMES: dict[Status, str] = {
    "indexed": "ImagesIndexed",
    "unchanged": "ImagesUnchanged",
    "rejected": "ImagesRejected",
    "deleted": "ImagesDeleted",
    "ignored": "KeysIgnored",
    "failed": "TransientFailures",
}


@dataclass(frozen=True, slots=True)
class Notification:
    """One S3 event notification, read as "this key changed" and nothing more."""

    bucket: str
    key: str  # decoded: S3 sends keys URL-encoded form style ("red+flower.jpg", "%2B" for '+')
    event: str  # e.g. "ObjectCreated:Put", "ObjectRemoved:Delete"
    version: str  # the versionId, or the sequencer in an unversioned bucket

    def identity(self) -> dict[str, str]:
        """What makes two deliveries the same notification: never the SQS message id, since
        S3 may send one notification twice, in two messages."""
        return {"bucket": self.bucket, "key": self.key, "version": self.version, "event": self.event}


@dataclass(frozen=True, slots=True)
class KeyOutcome:
    key: str
    status: Status
    reason: str | None = None  # why it was rejected, ignored or failed


class MalformedMessage(ValueError):
    """An SQS message body that is not an S3 event notification; acknowledged, never retried."""


class TransientFailure(Exception):
    """A key could not be converged now; its messages go back to the queue."""


def handle_upload_events(
    event: Mapping[str, Any],
    services: Services,
    *,
    context: LambdaContext | None = None,
    metrics: Metrics | None = None,
) -> PartialItemFailureResponse:
    """Converge every key named in an SQS batch of S3 notifications.

    Returns the partial batch response: only the messages naming a key that failed
    transiently are listed, so SQS delivers them again.
    """
    ledger = ledger_for(services.settings)
    ledger.use_context(context)
    messages = {record.message_id: _read(record, services.objects.bucket) for record in SQSEvent(dict(event)).records}
    named = [n for notifications in messages.values() for n in notifications]
    fresh = [n for n in named if not ledger.seen(n)]
    outcomes = converge(fresh, services)
    if metrics is not None:
        _record_metrics(metrics, outcomes.values(), messages=len(messages), skipped=len(named) - len(fresh))

    def settle(record: SQSRecord) -> None:
        for notification in messages[record.message_id]:
            outcome = outcomes.get(notification.key)
            if outcome is not None:  # None: this notification was converged by an earlier delivery
                ledger.settle(notification, outcome)

    # Every record is settled from the outcomes computed above; an all-failed batch is reported
    # like any other rather than raised, so the local twin and Lambda see the same response.
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    return process_partial_response(event=dict(event), record_handler=settle, processor=processor, context=context)


def parse_message(body: str) -> list[Notification]:
    """The notifications in one SQS message body ([] for S3's test event); raises MalformedMessage."""
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise MalformedMessage(f"the body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise MalformedMessage("the body is not a JSON object")
    if payload.get("Event") == TEST_EVENT:
        logger.info("S3 test event acknowledged", extra={"bucket": payload.get("Bucket")})
        return []
    try:
        return [_notification(record) for record in S3Event(payload).records]
    except (KeyError, TypeError, AttributeError) as exc:
        raise MalformedMessage(f"not an S3 event notification (missing or malformed {exc})") from exc


def _notification(record: S3EventRecord) -> Notification:
    s3 = record.s3
    stored = s3.get_object
    version = stored.version_id or stored.get("sequencer") or ""
    key = stored.key
    if not isinstance(key, str) or not key:
        raise TypeError("s3.object.key")
    return Notification(bucket=s3.bucket.name, key=unquote_plus(key), event=record.event_name, version=version)


def _read(record: SQSRecord, bucket: str) -> list[Notification]:
    try:
        notifications = parse_message(record.body)
    except MalformedMessage as exc:
        logger.error("malformed message acknowledged", extra={"message_id": record.message_id, "error": str(exc)})
        return []
    ours = [n for n in notifications if n.bucket == bucket]
    for foreign in (n for n in notifications if n.bucket != bucket):
        logger.warning("notification for another bucket acknowledged", extra={"bucket": foreign.bucket})
    return ours


def converge(notifications: Iterable[Notification], services: Services) -> dict[str, KeyOutcome]:
    """Make the indexes match the bucket for every key named: one outcome per distinct key."""
    outcomes: dict[str, KeyOutcome] = {}
    downloads: list[IndexRequest] = []
    for key in dict.fromkeys(n.key for n in notifications):
        owner = owner_from_key(key, services.settings.owner_prefix)
        if owner is None:
            logger.warning("key outside the owners' layout acknowledged, not indexed", extra={"key": key})
            outcomes[key] = KeyOutcome(key, "ignored", f"not under {services.settings.owner_prefix}<owner>/")
            continue
        try:
            fetched = _fetch(key, owner, services)
        except StoreUnavailable as exc:
            outcomes[key] = _failed(key, exc)
            continue
        if isinstance(fetched, KeyOutcome):
            outcomes[key] = fetched
        else:
            downloads.append(fetched)
    outcomes.update(_index(downloads, services))
    return outcomes


def _fetch(key: str, owner: str, services: Services) -> KeyOutcome | IndexRequest:
    """The object's bytes to index, or the outcome when there is nothing to index."""
    limit = services.settings.max_object_bytes
    head = services.objects.head(key)
    if head is None:
        return _remove(key, services)
    if head.size > limit:
        return _reject(key, services, "too_large", f"{head.size} bytes is over the limit of {limit} bytes")
    try:
        data = services.objects.get(key)
    except NotFound:  # deleted between the head and the get
        return _remove(key, services)
    if len(data) > limit:  # replaced by a larger object between the head and the get
        return _reject(key, services, "too_large", f"{len(data)} bytes is over the limit of {limit} bytes")
    return IndexRequest(key, data, owner)


def _index(requests: list[IndexRequest], services: Services) -> dict[str, KeyOutcome]:
    if not requests:
        return {}
    try:
        results = services.indexer.index_many(requests, skip_unchanged=True)
    except StoreUnavailable as exc:
        return {r.key: _failed(r.key, exc) for r in requests}
    except Exception as exc:
        if len(requests) == 1:
            logger.exception("unexpected error indexing an image", extra={"key": requests[0].key})
            return {requests[0].key: KeyOutcome(requests[0].key, "failed", f"unexpected {type(exc).__name__}")}
        # One image must not hold its whole batch hostage: find it by indexing them one by one.
        logger.warning("unexpected error indexing a batch; retrying image by image", exc_info=True)
        return {key: outcome for r in requests for key, outcome in _index([r], services).items()}

    outcomes: dict[str, KeyOutcome] = {}
    for request, result in zip(requests, results, strict=True):
        if isinstance(result, ImageRejected):
            try:
                outcomes[request.key] = _reject(request.key, services, result.reason, result.message)
            except StoreUnavailable as exc:
                outcomes[request.key] = _failed(request.key, exc)
        else:
            outcomes[request.key] = KeyOutcome(request.key, result.status)
    return outcomes


def _remove(key: str, services: Services) -> KeyOutcome:
    services.indexer.delete(key)
    return KeyOutcome(key, "deleted")


def _reject(key: str, services: Services, reason: str, message: str) -> KeyOutcome:
    services.indexer.delete(key)  # whatever was indexed under this key is no longer in the bucket
    logger.warning("image rejected", extra={"key": key, "reason": reason, "detail": message})
    return KeyOutcome(key, "rejected", reason)


def _failed(key: str, exc: Exception) -> KeyOutcome:
    logger.warning("transient failure; the message will be delivered again", extra={"key": key, "error": str(exc)})
    return KeyOutcome(key, "failed", str(exc))


def _record_metrics(metrics: Metrics, outcomes: Iterable[KeyOutcome], *, messages: int, skipped: int) -> None:
    # Messages are counted even when they name no object (S3's test event), so that every
    # invocation publishes something.
    metrics.add_metric(name="MessagesReceived", unit=MetricUnit.Count, value=messages)
    counts = Counter(outcome.status for outcome in outcomes)
    for status, count in counts.items():
        metrics.add_metric(name=METRIC_NAMES[status], unit=MetricUnit.Count, value=count)
    if skipped:
        metrics.add_metric(name="DuplicateNotifications", unit=MetricUnit.Count, value=skipped)


# --- Idempotency ----------------------------------------------------------------------------
#
# Processing converges to the bucket's current state, so handling a notification twice is
# harmless: idempotency here is a cost saver (no second download and hash of the same upload),
# not a correctness need. Whenever the idempotency store cannot answer, the work is done anyway.


class NotificationLedger(Protocol):
    """Which notifications were already converged by an earlier delivery."""

    def use_context(self, context: LambdaContext | None) -> None: ...

    def seen(self, notification: Notification) -> bool: ...

    def settle(self, notification: Notification, outcome: KeyOutcome) -> None:
        """Record the outcome; raises TransientFailure when the key must be tried again."""


def ledger_for(settings: Settings) -> NotificationLedger:
    """The one place that decides: a DynamoDB ledger when a table is configured, else none."""
    return _ledger(settings.idempotency_table)


@functools.cache
def _ledger(table_name: str | None) -> NotificationLedger:
    return _NoLedger() if table_name is None else _DynamoDBLedger(table_name)


def _settle(*, notification: dict[str, str], outcome: KeyOutcome) -> dict[str, str]:
    if outcome.status == "failed":
        raise TransientFailure(f"{outcome.key}: {outcome.reason}")
    return {"key": outcome.key, "status": outcome.status}


class _NoLedger:
    """No idempotency store (the local twin, tests): every delivery is converged."""

    def use_context(self, context: LambdaContext | None) -> None:
        return None

    def seen(self, notification: Notification) -> bool:
        return False

    def settle(self, notification: Notification, outcome: KeyOutcome) -> None:
        _settle(notification=notification.identity(), outcome=outcome)


class _DynamoDBLedger:
    """Powertools idempotency keyed on bucket + key + version (or sequencer) + event name.

    The batch is embedded together, so the check comes first (``seen``, before any download)
    and the record is written per notification afterwards by ``idempotent_function``, which
    also clears it when the key failed so that the redelivery is not skipped.
    """

    def __init__(self, table_name: str) -> None:
        from aws_lambda_powertools.utilities.idempotency import (
            DynamoDBPersistenceLayer,
            IdempotencyConfig,
            idempotent_function,
        )

        self.config = IdempotencyConfig(
            event_key_jmespath="[bucket, key, version, event]",
            raise_on_no_idempotency_key=True,
            expires_after_seconds=IDEMPOTENCY_TTL_SECONDS,
            use_local_cache=True,
        )
        self.persistence = DynamoDBPersistenceLayer(table_name=table_name)
        # The same key prefix for the check and the write, whatever the decorated function is called.
        self.persistence.configure(self.config, key_prefix=IDEMPOTENCY_KEY_PREFIX)
        self._settle = idempotent_function(
            _settle,
            data_keyword_argument="notification",
            persistence_store=self.persistence,
            config=self.config,
            key_prefix=IDEMPOTENCY_KEY_PREFIX,
        )

    def use_context(self, context: LambdaContext | None) -> None:
        if context is not None:
            self.config.register_lambda_context(context)

    def seen(self, notification: Notification) -> bool:
        from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyItemNotFoundError

        try:
            record = self.persistence.get_record(notification.identity())
        except IdempotencyItemNotFoundError:
            return False
        except Exception:
            logger.warning("idempotency store unavailable; converging anyway", exc_info=True)
            return False
        return record is not None and record.status == "COMPLETED"

    def settle(self, notification: Notification, outcome: KeyOutcome) -> None:
        from aws_lambda_powertools.utilities.idempotency.exceptions import (
            IdempotencyAlreadyInProgressError,
            IdempotencyPersistenceLayerError,
        )

        try:
            self._settle(notification=notification.identity(), outcome=outcome)
        except IdempotencyAlreadyInProgressError:
            logger.info("another delivery of this notification is in progress", extra={"key": notification.key})
        except IdempotencyPersistenceLayerError:
            # The key converged; failing to remember that only costs a repeat on a duplicate.
            logger.warning("could not record the notification as done", exc_info=True)

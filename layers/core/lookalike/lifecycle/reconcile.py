"""Reconcile: make both indexes match the bucket again, whatever went wrong in between.

Events are delivered at least once, but a message can still end in the dead-letter queue, a
store can be restored from an old backup, a bug can leave half an entry. Reconcile compares the
bucket with the hash index *and* the vector index, image by image, and repairs:

- an object never indexed: index it (the upload-event path);
- an object changed since it was indexed (another size, or written after ``indexed_at``): index
  it again; the indexer compares SHA-256, so identical bytes cost a download, no embedding;
- entries whose object is gone: the upload-event path, which looks the object up (HEAD) right
  then, so an upload that landed during the run is indexed, never removed;
- a vector without a record: the upload-event path for its key (indexed, or deleted if gone);
- a record without a vector, or whose vector is of other bytes: drop the record, and the
  upload-event path indexes the image afresh (vector first, then record);
- a record labelled with another model than the live one whose live vector is current:
  relabel the record (after a model switch: nothing is embedded again);
- entries for keys outside the owners' layout: delete them.

Entries whose id is not this bucket's id for their key belong to another bucket sharing the
indexes and are left alone. Objects the decoder rejected are remembered (key, size, write time)
in the reconcile state, so they are not downloaded again on every run while they stay the same.

Scale. The listing comes in key order, the hash index scans in id order and the vector index in
its own order, and ids are hashes of keys, so no two of them can be merged as they stream. Each
is streamed into a temporary SQLite file instead (an external sort on disk), and one query joins
them in id order: memory stays flat (about 50 MB), disk is about 500 bytes per object (measured:
200,000 objects in a 103 MB file, loaded in 3 s and joined in 2 s on this 2-core machine). A
million objects need about 0.5 GB of the Lambda's ephemeral storage (up to 10 GB: some 20 million
objects); ``--prefix`` splits a larger bucket into passes. Listing and scanning take most of a
run's time at scale (ListObjectsV2 returns 1,000 keys a request); repairs are few on a healthy system.

Time budget. With a deadline (the scheduled function's), repairs stop cleanly before it and the
state records the last id repaired; the next run rebuilds the plan and resumes after that id. A
run that completes clears the cursor. ``dry_run`` plans and reports and changes nothing.

A record's ``model`` names the live model whose vector was written with it. After a switch the
records keep the old name until relabelled here, which is what makes the cheap "already indexed"
checks (backfill, the indexer's ``skip_unchanged``) hold again without re-embedding everything.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from lookalike.errors import StoreUnavailable
from lookalike.files import write_atomically
from lookalike.identity import image_id
from lookalike.keys import owner_from_key
from lookalike.lifecycle.listing import ListedObject, list_objects

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from lookalike.bootstrap import Services
    from lookalike.edges.upload_events import KeyOutcome
    from lookalike.ports import ImageRecord

logger = logging.getLogger(__name__)

Action = Literal["index", "reindex", "repair", "relabel", "delete"]

#: Where the reconcile state lives in the upload bucket: outside every owner's prefix, so the
#: indexer acknowledges its notifications without indexing anything.
STATE_KEY = "_lookalike/reconcile/state.json"
LOCAL_STATE_FILE = "reconcile-state.json"
REPAIR_BATCH = 10  # keys converged together: one embedding batch, as an SQS batch would be
LOAD_BATCH = 1_000
KEY_LOOKUP_BATCH = 100
MAX_LISTED_FINDINGS = 1_000  # the report lists this many; the counts are always complete


@dataclass(frozen=True, slots=True)
class Finding:
    """One image whose entries do not match the bucket, and what reconcile does about it."""

    id: str
    key: str
    action: Action
    reason: str
    listed: ListedObject | None = None  # the object as the listing showed it
    indexed: tuple[str, float] | None = None  # the record's sha256 and indexed_at, as scanned


@dataclass
class ReconcileReport:
    dry_run: bool
    prefix: str
    scanned: Counter[str] = field(default_factory=Counter)  # objects, records, vectors
    planned: Counter[str] = field(default_factory=Counter)  # "<action>: <reason>" -> count
    results: Counter[str] = field(default_factory=Counter)  # what the repairs did
    unchanged: Counter[str] = field(default_factory=Counter)  # in sync, or knowingly left alone
    findings: list[Finding] = field(default_factory=list)  # the first MAX_LISTED_FINDINGS
    complete: bool = True
    resumed_after: str = ""

    @property
    def nothing_to_do(self) -> bool:
        return not self.planned

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "prefix": self.prefix,
            "complete": self.complete,
            "resumed_after": self.resumed_after,
            "scanned": dict(self.scanned),
            "planned": dict(self.planned),
            "results": dict(self.results),
            "left_alone": dict(self.unchanged),
            "findings": [{"key": f.key, "id": f.id, "action": f.action, "reason": f.reason} for f in self.findings],
        }


class OutOfTime(Exception):
    """The time budget ran out while the plan was being built; nothing was changed."""


# --- State ---------------------------------------------------------------------------------------


class StateStore(Protocol):
    def load(self) -> dict[str, Any]: ...

    def save(self, state: dict[str, Any]) -> None: ...


class FileState:
    """The reconcile state in a local file (the embedded setup), written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        try:
            loaded: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
            return loaded
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("unreadable reconcile state %s, starting afresh: %s", self.path, exc)
            return {}

    def save(self, state: dict[str, Any]) -> None:
        write_atomically(self.path, json.dumps(state).encode())


class S3State:
    """The reconcile state as one object in the upload bucket, under a key no owner can have."""

    def __init__(self, client: S3Client, bucket: str, key: str = STATE_KEY) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key

    def load(self) -> dict[str, Any]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in {"404", "NoSuchKey"}:
                return {}
            raise StoreUnavailable(f"cannot read the reconcile state s3://{self.bucket}/{self.key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"cannot read the reconcile state s3://{self.bucket}/{self.key}: {exc}") from exc
        loaded: dict[str, Any] = json.loads(body)
        return loaded

    def save(self, state: dict[str, Any]) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.key, Body=json.dumps(state).encode(), ContentType="application/json"
            )
        except (ClientError, BotoCoreError) as exc:
            raise StoreUnavailable(f"cannot write the reconcile state s3://{self.bucket}/{self.key}: {exc}") from exc


def state_store_for(services: Services) -> StateStore:
    """A file in the data directory with the local object store, else an object in the bucket."""
    from lookalike.adapters.s3_objects import S3ObjectStore

    objects = services.objects
    if isinstance(objects, S3ObjectStore):
        return S3State(objects.client, objects.bucket)
    return FileState(services.settings.data_dir / LOCAL_STATE_FILE)


# --- The plan ------------------------------------------------------------------------------------


class Plan:
    """The bucket, the hash index and the vector index side by side in a temporary SQLite file."""

    _SCHEMA = """
        CREATE TABLE objects (id TEXT PRIMARY KEY, key TEXT NOT NULL, size INTEGER NOT NULL, written_by REAL);
        CREATE TABLE records (id TEXT PRIMARY KEY, key TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
                              indexed_at REAL NOT NULL, model TEXT NOT NULL);
        CREATE TABLE vectors (id TEXT PRIMARY KEY, sha256 TEXT NOT NULL, key TEXT);
        CREATE TABLE rejected (key TEXT PRIMARY KEY, size INTEGER NOT NULL, written_by REAL);
    """

    def __init__(self, directory: str, check_time: Callable[[], None]) -> None:
        self.db = sqlite3.connect(Path(directory) / "plan.sqlite")
        self.db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + self._SCHEMA)
        self.check_time = check_time

    def load(self, table: str, rows: Iterable[tuple[Any, ...]]) -> int:
        """Insert rows in batches; returns how many (a repeated id keeps its first row)."""
        count = 0
        iterator = iter(rows)
        while batch := list(islice(iterator, LOAD_BATCH)):
            placeholders = ", ".join("?" * len(batch[0]))
            self.db.executemany(f"INSERT OR IGNORE INTO {table} VALUES ({placeholders})", batch)  # noqa: S608
            count += len(batch)
            self.check_time()
        self.db.commit()
        return count

    def orphan_vector_ids(self) -> list[str]:
        sql = "SELECT id FROM vectors WHERE id NOT IN (SELECT id FROM records) AND id NOT IN (SELECT id FROM objects)"
        return [row[0] for row in self.db.execute(sql)]

    def set_vector_keys(self, keys: dict[str, str]) -> None:
        self.db.executemany("UPDATE vectors SET key = ? WHERE id = ?", [(k, i) for i, k in keys.items()])
        self.db.commit()

    def rows(self, after_id: str) -> Iterator[tuple[Any, ...]]:
        """One row per id in any of the three, in id order, after ``after_id``."""
        return self.db.execute(
            """
            SELECT ids.id, o.key, o.size, o.written_by, r.key, r.size, r.sha256, r.indexed_at, r.model,
                   v.sha256, v.key, j.size, j.written_by
            FROM (SELECT id FROM objects UNION SELECT id FROM records UNION SELECT id FROM vectors) AS ids
            LEFT JOIN objects AS o ON o.id = ids.id
            LEFT JOIN records AS r ON r.id = ids.id
            LEFT JOIN vectors AS v ON v.id = ids.id
            LEFT JOIN rejected AS j ON j.key = o.key
            WHERE ids.id > ?
            ORDER BY ids.id
            """,
            (after_id,),
        )

    def close(self) -> None:
        self.db.close()


@dataclass(frozen=True, slots=True)
class _Row:
    id: str
    object: ListedObject | None
    record: tuple[str, int, str, float, str] | None  # key, size, sha256, indexed_at, model
    vector_sha256: str | None
    vector_key: str | None
    rejected: tuple[int, float | None] | None  # size and write time when last rejected

    @classmethod
    def of(cls, row: tuple[Any, ...]) -> _Row:
        id_, o_key, o_size, o_written, r_key, r_size, r_sha, r_at, r_model, v_sha, v_key, j_size, j_written = row
        listed = None if o_key is None else ListedObject(o_key, o_size, "", o_written)
        record = None if r_key is None else (r_key, r_size, r_sha, r_at, r_model)
        rejected = None if j_size is None else (j_size, j_written)
        return cls(id_, listed, record, v_sha, v_key, rejected)


def decide(row: _Row, *, bucket: str, prefix: str, owner_prefix: str, model: str, max_bytes: int) -> Finding | str:
    """What to do about one id: a Finding, or why nothing is done (a count name)."""
    key = row.object.key if row.object else row.record[0] if row.record else row.vector_key
    if key is None:
        return "vector gone since the scan"
    if not key.startswith(prefix):
        return "outside the prefix"  # a vector-only entry, whose key only the lookup told
    if image_id(bucket, key) != row.id:
        return "another bucket's entry"
    has_entries = row.record is not None or row.vector_sha256 is not None
    if owner_from_key(key, owner_prefix) is None:
        return Finding(row.id, key, "delete", "outside the owners' layout") if has_entries else "not indexable"
    listed = row.object
    if listed is None:
        return Finding(row.id, key, "delete", "object gone")
    if listed.size > max_bytes:
        return Finding(row.id, key, "reindex", "too large", listed) if has_entries else "too large"
    if row.record is None:
        if row.vector_sha256 is not None:
            return Finding(row.id, key, "index", "vector without record", listed)
        if row.rejected == (listed.size, listed.written_by):
            return "known rejection"
        return Finding(row.id, key, "index", "not indexed", listed)
    _, size, sha256, indexed_at, record_model = row.record
    indexed = (sha256, indexed_at)
    if row.vector_sha256 is None:
        return Finding(row.id, key, "repair", "record without vector", listed, indexed)
    if row.vector_sha256 != sha256:
        return Finding(row.id, key, "repair", "vector of other bytes", listed, indexed)
    if size != listed.size or listed.written_by is None or listed.written_by >= indexed_at:
        return Finding(row.id, key, "reindex", "changed since indexed", listed, indexed)
    if record_model != model:
        return Finding(row.id, key, "relabel", f"labelled {record_model}", listed, indexed)
    return "in sync"


# --- The run -----------------------------------------------------------------------------------------


def reconcile(
    services: Services,
    *,
    prefix: str | None = None,
    dry_run: bool = False,
    deadline: float | None = None,
    state: StateStore | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ReconcileReport:
    """Compare the bucket under ``prefix`` (default: the owners' prefix) with both indexes and repair.

    ``deadline`` (a ``clock`` reading) makes the run stop cleanly before it and resume next time
    from the state; without one the run starts from the beginning and goes to the end.
    """
    settings = services.settings
    prefix = settings.owner_prefix if prefix is None else prefix
    state = state or state_store_for(services)
    saved = state.load()
    rejected: dict[str, list[Any]] = dict(saved.get("rejected", {}))
    after_id = saved.get("after_id", "") if deadline is not None and saved.get("prefix") == prefix else ""
    report = ReconcileReport(dry_run=dry_run, prefix=prefix, resumed_after=after_id)

    def check_time() -> None:
        if deadline is not None and clock() >= deadline:
            raise OutOfTime

    with tempfile.TemporaryDirectory(prefix="lookalike-reconcile-") as scratch:
        plan = Plan(scratch, check_time)
        try:
            try:
                _build(plan, services, prefix, rejected, report)
            except OutOfTime:
                logger.error("the time budget ran out while listing and scanning: nothing repaired")
                report.complete = False
                return report
            repairer = _Repairer(services, report, rejected)
            findings = _findings(plan, services, prefix, after_id, report)
            for batch in _batches(findings, REPAIR_BATCH):
                report.findings.extend(batch[: MAX_LISTED_FINDINGS - len(report.findings)])
                if dry_run:
                    continue
                if deadline is not None and clock() >= deadline:
                    report.complete = False
                    break
                repairer.repair(batch)
                after_id = batch[-1].id
        finally:
            plan.close()
    if not dry_run:
        _save_state(state, report, prefix, after_id, rejected, repairer.seen_rejections)
    return report


def _build(
    plan: Plan, services: Services, prefix: str, rejected: dict[str, list[Any]], report: ReconcileReport
) -> None:
    bucket = services.objects.bucket
    report.scanned["objects"] = plan.load(
        "objects",
        ((image_id(bucket, o.key), o.key, o.size, o.written_by) for o in list_objects(services.objects, prefix)),
    )
    report.scanned["records"] = plan.load(
        "records",
        (
            (r.id, r.key, r.size, r.sha256, r.indexed_at, r.model)
            for r in services.hashes.scan()
            if r.key.startswith(prefix)
        ),
    )
    report.scanned["vectors"] = plan.load("vectors", ((i, sha, None) for i, sha in services.vectors.scan_ids()))
    plan.load("rejected", ((k, v[0], v[1]) for k, v in rejected.items() if k.startswith(prefix)))
    orphans = plan.orphan_vector_ids()
    for start in range(0, len(orphans), KEY_LOOKUP_BATCH):
        found = services.vectors.get(orphans[start : start + KEY_LOOKUP_BATCH], owner=None)
        plan.set_vector_keys({i: entry.key for i, entry in found.items()})
        plan.check_time()


def _findings(plan: Plan, services: Services, prefix: str, after_id: str, report: ReconcileReport) -> Iterator[Finding]:
    settings = services.settings
    options = {
        "bucket": services.objects.bucket,
        "prefix": prefix,
        "owner_prefix": settings.owner_prefix,
        "model": services.indexer.extractor.model.name,
        "max_bytes": settings.max_object_bytes,
    }
    for row in plan.rows(after_id):
        decision = decide(_Row.of(row), **options)  # type: ignore[arg-type]
        if isinstance(decision, str):
            report.unchanged[decision] += 1
            continue
        report.planned[f"{decision.action}: {decision.reason}"] += 1
        yield decision


def _batches(findings: Iterator[Finding], size: int) -> Iterator[list[Finding]]:
    while batch := list(islice(findings, size)):
        yield batch


def _save_state(
    state: StateStore,
    report: ReconcileReport,
    prefix: str,
    after_id: str,
    rejected: dict[str, list[Any]],
    seen_rejections: set[str],
) -> None:
    if report.complete:
        # Forget rejections of objects that are gone or changed (they were planned again).
        rejected = {k: v for k, v in rejected.items() if not k.startswith(prefix) or k in seen_rejections}
        after_id = ""
    state.save({"version": 1, "prefix": prefix, "after_id": after_id, "rejected": rejected, "saved_at": time.time()})


class _Repairer:
    def __init__(self, services: Services, report: ReconcileReport, rejected: dict[str, list[Any]]) -> None:
        self.services = services
        self.report = report
        self.rejected = rejected
        self.seen_rejections: set[str] = set(rejected)
        self.model = services.indexer.extractor.model.name

    def repair(self, batch: Sequence[Finding]) -> None:
        """Repair one batch; a store failure leaves its keys for the next run."""
        try:
            self._repair(batch)
        except StoreUnavailable as exc:
            logger.warning("repair failed, left for the next run: %s", exc)
            self.report.results["failed"] += len(batch)

    def _repair(self, batch: Sequence[Finding]) -> None:
        by_action: dict[Action, list[Finding]] = {}
        for finding in batch:
            by_action.setdefault(finding.action, []).append(finding)
        owner_prefix = self.services.settings.owner_prefix
        to_converge = by_action.get("index", [])
        for finding in by_action.get("delete", []):
            if owner_from_key(finding.key, owner_prefix) is None:  # the indexer ignores such keys
                self.services.indexer.delete(finding.key)
                self.report.results["deleted"] += 1
            else:  # the upload-event path looks the object up first, and indexes it if it is back
                to_converge.append(finding)
        broken = by_action.get("repair", [])
        if broken:
            # The record is what makes an entry look complete; without it the upload-event path
            # indexes the image afresh and writes both (vector first, then record).
            self.services.hashes.delete([f.id for f in broken])
        relabel = by_action.get("relabel", [])
        broken_again = self._relabel(relabel) if relabel else []
        if broken_again:
            self.services.hashes.delete([f.id for f in broken_again])
        self._converge(to_converge + broken + broken_again)
        reindex = by_action.get("reindex", [])
        if reindex:
            started = time.time()  # before the download: whatever is verified was written before it
            outcomes = self._converge(reindex)
            verified = [f for f in reindex if outcomes.get(f.key) == "unchanged"]
            self._rewrite_records(verified, indexed_at=started)

    def _converge(self, findings: Sequence[Finding]) -> dict[str, str]:
        """The upload-event path for these keys; returns each key's outcome."""
        from lookalike.edges.upload_events import Notification, converge

        if not findings:
            return {}
        bucket = self.services.objects.bucket
        outcomes = converge([Notification(bucket, f.key, "Reconcile", "") for f in findings], self.services)
        for finding in findings:
            outcome = outcomes.get(finding.key)
            if outcome is not None:
                self.report.results[outcome.status] += 1
                self._remember_rejection(finding, outcome)
        return {key: outcome.status for key, outcome in outcomes.items()}

    def _remember_rejection(self, finding: Finding, outcome: KeyOutcome) -> None:
        """Remember a decoder's rejection with the object as listed: while the listing shows the
        same size and write time, the object is not downloaded again (a rejection is final)."""
        if outcome.status == "rejected" and outcome.reason != "too_large" and finding.listed is not None:
            self.rejected[finding.key] = [finding.listed.size, finding.listed.written_by]
            self.seen_rejections.add(finding.key)

    def _relabel(self, findings: Sequence[Finding]) -> list[Finding]:
        """Relabel records whose live vector is current; returns those whose vector is not."""
        ids = [f.id for f in findings]
        vectors = self.services.vectors.get(ids, owner=None)
        records = self.services.hashes.get(ids, owner=None)
        current, stale = [], []
        for finding in findings:
            vector, record = vectors.get(finding.id), records.get(finding.id)
            if record is None:
                continue  # removed since the scan: nothing to relabel
            if vector is not None and vector.model == self.model and vector.sha256 == record.sha256:
                current.append(finding)
            else:
                stale.append(finding)
        self._rewrite_records(current, model=self.model)
        return stale

    def _rewrite_records(self, findings: Sequence[Finding], **changes: Any) -> None:
        """Rewrite fields of records that were just verified, then check their objects are still there.

        Another writer (the indexer) may change or delete a record meanwhile: a record that
        differs from the one read is left to it, and an object deleted while the record was being
        written has its entries removed right after, so no record outlives its object.
        """
        if not findings:
            return
        records: dict[str, ImageRecord] = self.services.hashes.get([f.id for f in findings], owner=None)
        rewritten = [
            (finding, replace(record, **changes))
            for finding in findings
            if (record := records.get(finding.id)) is not None and (record.sha256, record.indexed_at) == finding.indexed
        ]
        self.services.hashes.upsert([record for _, record in rewritten])
        self.report.results["relabelled" if "model" in changes else "verified"] += len(rewritten)
        self._converge([finding for finding, record in rewritten if self.services.objects.head(record.key) is None])

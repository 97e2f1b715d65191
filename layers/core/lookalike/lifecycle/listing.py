"""What is in the bucket, streamed in key order, and the cheap "already indexed" check.

A listing gives each object's size, ETag and LastModified; the index knows, for each image, its
size, SHA-256, model and when it was indexed, but not the ETag (keeping it would mean a schema
change in every hash index adapter). So "already indexed with the same content" is decided from
what both sides know:

    a record exists, for the live model, with the same size,
    and the object was written before the record was made (``written_by < indexed_at``).

``written_by`` is the latest moment the object can have been written: S3 stamps LastModified in
whole seconds, and the indexer's clock may differ from S3's by a little, so an S3 object counts
as written up to ``TIMESTAMP_SLACK`` seconds after its LastModified (a file in the local store,
``LOCAL_TIMESTAMP_SLACK`` after its mtime). Anything the check cannot
vouch for is handed to the indexer, whose ``skip_unchanged`` compares SHA-256 after a download:
that stays the ground truth, and the cheap check only saves downloads.

Where the check can be wrong: an overwrite with an object of exactly the same size that lands
*while* the previous version is being embedded (after its download, before ``indexed_at``), or a
multipart upload, whose LastModified is when the upload started, completed after the record was
made, again with the same size. Both send an ObjectCreated event of their own, which re-indexes
the key; only if that event were also lost for good would the stale entry survive. Uploads
through the API are presigned POSTs, which are never multipart.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus, urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from lookalike.errors import ConfigurationError, StoreUnavailable

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

    from lookalike.ports import ImageRecord, ObjectStore

logger = logging.getLogger(__name__)

#: Seconds added to an S3 LastModified: it is truncated to the second, and clocks differ a little.
TIMESTAMP_SLACK = 2.0
#: Seconds added to a file's mtime: file systems stamp with a coarse clock, a tick (up to 10 ms)
#: behind the ``time.time()`` that ``indexed_at`` comes from.
LOCAL_TIMESTAMP_SLACK = 0.1
LIST_PAGE = 1_000


@dataclass(frozen=True, slots=True)
class ListedObject:
    """One object as a listing shows it."""

    key: str
    size: int
    etag: str
    written_by: float | None  # epoch seconds: the object was last written no later; None if unknown
    version_id: str | None = None


def looks_indexed(listed: ListedObject, record: ImageRecord | None, model: str) -> bool:
    """True when ``record`` was made from this very object by ``model`` (see the module docstring).

    False means "not known to be": the indexer then downloads the object and decides by SHA-256.
    """
    return (
        record is not None
        and record.model == model
        and record.size == listed.size
        and listed.written_by is not None
        and listed.written_by < record.indexed_at
    )


def list_objects(objects: ObjectStore, prefix: str = "", start_after: str = "") -> Iterator[ListedObject]:
    """The objects under ``prefix`` whose keys sort after ``start_after``, in key order.

    S3 is listed with ListObjectsV2 (1,000 keys a request, StartAfter to resume); the local
    folder store gives file modification times; any other store gives no times.
    """
    from lookalike.adapters.local_objects import LocalObjectStore
    from lookalike.adapters.s3_objects import S3ObjectStore

    if isinstance(objects, S3ObjectStore):
        yield from _list_s3(objects.client, objects.bucket, prefix, start_after)
        return
    for stored in objects.list(prefix):
        if stored.key <= start_after:
            continue
        written = _local_mtime(objects, stored.key) if isinstance(objects, LocalObjectStore) else None
        yield ListedObject(stored.key, stored.size, stored.etag, written, stored.version_id)


def _list_s3(client: S3Client, bucket: str, prefix: str, start_after: str) -> Iterator[ListedObject]:
    paginator = client.get_paginator("list_objects_v2")
    try:
        pages = paginator.paginate(
            Bucket=bucket, Prefix=prefix, StartAfter=start_after, PaginationConfig={"PageSize": LIST_PAGE}
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield ListedObject(
                    item["Key"],
                    item["Size"],
                    item["ETag"].strip('"'),
                    item["LastModified"].timestamp() + TIMESTAMP_SLACK,
                )
    except (ClientError, BotoCoreError) as exc:
        raise StoreUnavailable(f"listing s3://{bucket}/{prefix} failed: {exc}") from exc


def _local_mtime(objects: Any, key: str) -> float | None:
    # The folder store keeps no LastModified of its own; its file's mtime is the write time (the
    # file is written whole, then renamed into place). Reaches into the adapter's layout until
    # StoredObject carries a last-modified time.
    try:
        return float(objects._path(key).stat().st_mtime) + LOCAL_TIMESTAMP_SLACK
    except OSError:  # deleted since it was listed
        return None


# --- S3 Inventory ------------------------------------------------------------------------------


def inventory_objects(
    manifest: str, *, s3: S3Client | None = None, prefix: str = "", skip: int = 0
) -> Iterator[ListedObject]:
    """Objects from an S3 Inventory report (CSV format), in the report's order.

    ``manifest`` is ``s3://bucket/.../manifest.json`` (data files are read from the report's
    destination bucket) or a local path (data files are looked for beside it, or in ``../data/``,
    as ``aws s3 sync`` of the report's folder lays them out). Keys are URL-decoded; with
    versions in the report, only current versions that are not delete markers are listed.
    ``skip`` leaves out that many of the objects listed first (for resuming: the same report and
    prefix list the same objects in the same order).
    """
    document, read_file = _manifest(manifest, s3)
    file_format = document.get("fileFormat", "")
    if file_format.upper() != "CSV":
        raise ConfigurationError(f"{manifest}: only CSV inventory reports are supported, not {file_format!r}")
    columns = [name.strip() for name in str(document["fileSchema"]).split(",")]
    if "Key" not in columns:
        raise ConfigurationError(f"{manifest}: the report has no Key column ({document['fileSchema']})")
    rows = (row for entry in document["files"] for row in _csv_rows(read_file(entry["key"]), entry["key"]))
    listed = (_inventory_row(dict(zip(columns, row, strict=False))) for row in rows)
    current = (obj for obj in listed if obj is not None and obj.key.startswith(prefix))
    for position, obj in enumerate(current):
        if position >= skip:
            yield obj


def _inventory_row(fields: dict[str, str]) -> ListedObject | None:
    """The object a report row describes; None for a delete marker or a noncurrent version."""
    if fields.get("IsLatest", "true") != "true" or fields.get("IsDeleteMarker", "false") == "true":
        return None
    modified = fields.get("LastModifiedDate")
    return ListedObject(
        unquote_plus(fields["Key"]),
        int(fields.get("Size") or 0),
        fields.get("ETag", "").strip('"'),
        _iso_seconds(modified) + TIMESTAMP_SLACK if modified else None,
        fields.get("VersionId") or None,
    )


def _iso_seconds(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _csv_rows(data: bytes, name: str) -> Iterable[list[str]]:
    text = gzip.decompress(data) if name.endswith(".gz") else data
    return csv.reader(io.StringIO(text.decode("utf-8")))


def _manifest(location: str, s3: S3Client | None) -> tuple[dict[str, Any], Any]:
    if location.startswith("s3://"):
        if s3 is None:
            import boto3

            s3 = boto3.client("s3")
        url = urlsplit(location)
        document = json.loads(_s3_read(s3, url.netloc, url.path.lstrip("/")))
        destination = str(document["destinationBucket"]).rsplit(":", 1)[-1]
        client = s3
        return document, lambda key: _s3_read(client, destination, key)
    path = Path(location)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the inventory manifest {path}: {exc}") from exc

    def read_local(key: str) -> bytes:
        name = PurePosixPath(key).name
        for candidate in (path.parent / name, path.parent.parent / "data" / name):
            if candidate.is_file():
                return candidate.read_bytes()
        raise ConfigurationError(f"inventory data file {name} is neither beside {path} nor in ../data/")

    return document, read_local


def _s3_read(s3: S3Client, bucket: str, key: str) -> bytes:
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except (ClientError, BotoCoreError) as exc:
        raise StoreUnavailable(f"cannot read s3://{bucket}/{key}: {exc}") from exc

"""The upload bucket on S3."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from lookalike.errors import NotFound, StoreUnavailable
from lookalike.ports import StoredObject

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger(__name__)

_MISSING = {"404", "NoSuchKey", "NotFound"}


def _is_missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _MISSING


def _etag(value: str) -> str:
    """S3 quotes its ETags (``"9e107d9d..."``); lookalike keeps the bare hex."""
    return value.strip('"')


class S3ObjectStore:
    """:class:`lookalike.ports.ObjectStore` on one S3 bucket (``client`` defaults to ``boto3.client("s3")``)."""

    def __init__(self, bucket: str, client: S3Client | None = None) -> None:
        self.bucket = bucket
        self.client: S3Client = client if client is not None else boto3.client("s3")

    def head(self, key: str) -> StoredObject | None:
        """Size, ETag and version of the object, or None when there is no such key."""
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise self._unavailable("head", key, exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable("head", key, exc) from exc
        return StoredObject(key, response["ContentLength"], _etag(response["ETag"]), response.get("VersionId"))

    def get(self, key: str) -> bytes:
        """The object's bytes; ``NotFound`` when there is no such key."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read()
        except ClientError as exc:
            if _is_missing(exc):
                raise NotFound(f"no object {key!r} in bucket {self.bucket}") from exc
            raise self._unavailable("get", key, exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable("get", key, exc) from exc

    def put(self, key: str, data: bytes, content_type: str | None = None) -> StoredObject:
        extra: dict[str, Any] = {"ContentType": content_type} if content_type else {}
        try:
            response = self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra)
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable("put", key, exc) from exc
        return StoredObject(key, len(data), _etag(response["ETag"]), response.get("VersionId"))

    def delete(self, key: str) -> None:
        """Remove the object (on a versioned bucket: add a delete marker); a missing key is fine."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if not _is_missing(exc):
                raise self._unavailable("delete", key, exc) from exc
        except BotoCoreError as exc:
            raise self._unavailable("delete", key, exc) from exc

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        """Current objects under ``prefix``, in key order (``version_id`` is not listed: None)."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield StoredObject(item["Key"], item["Size"], _etag(item["ETag"]))
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable("list", prefix, exc) from exc

    def presigned_put(
        self, key: str, expires_in: int = 900, content_type: str | None = None, *, max_bytes: int | None = None
    ) -> dict[str, Any]:
        """How a browser may put one object at exactly ``key``: a presigned POST (form upload).

        POST rather than a presigned PUT URL because S3 enforces a POST policy: the size
        range (``max_bytes``) and, when given, the exact Content-Type; a PUT URL checks
        neither the size nor, reliably, the type. Returns ``{"method": "POST", "url": ...,
        "fields": {...}}``: send ``fields`` then the ``file`` field as multipart/form-data.
        """
        fields: dict[str, Any] = {}
        conditions: list[Any] = []
        if content_type:
            fields["Content-Type"] = content_type
            conditions.append({"Content-Type": content_type})
        if max_bytes is not None:
            conditions.append(["content-length-range", 1, max_bytes])
        try:
            post = self.client.generate_presigned_post(
                self.bucket, key, Fields=fields, Conditions=conditions, ExpiresIn=expires_in
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable("presign", key, exc) from exc
        return {"method": "POST", "url": post["url"], "fields": post["fields"]}

    def _unavailable(self, operation: str, key: str, exc: Exception) -> StoreUnavailable:
        logger.warning("S3 %s of %r in %s failed: %s", operation, key, self.bucket, exc)
        return StoreUnavailable(f"S3 {operation} of {key!r} in bucket {self.bucket} failed: {exc}")

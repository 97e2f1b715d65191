"""A folder standing in for the upload bucket on a laptop: survives restarts, behaves like S3.

Object keys are never used as paths. Each object is one file named by the SHA-256 of its key
(``objects/<2 hex>/<64 hex>``), so no key (``../../etc/passwd``, ``/abs``, NUL, 1 000 bytes of
unicode) can leave the folder, and keys that S3 allows side by side (``a`` and ``a/b``) never
collide as file and directory. The file starts with one JSON line holding the verbatim key,
its content type and the MD5 ETag, then the bytes: a write is a single ``os.replace``, so an
object is always whole, old or new, never a mix of one's bytes and the other's ETag.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lookalike.errors import InvalidRequest, NotFound, StoreUnavailable
from lookalike.files import write_atomically
from lookalike.ports import StoredObject

logger = logging.getLogger(__name__)

#: S3's limit on a key, in UTF-8 bytes; the twin refuses what the bucket would refuse.
MAX_KEY_BYTES = 1024


class LocalObjectStore:
    """:class:`lookalike.ports.ObjectStore` in a folder (``root``, created if missing).

    ETags are the MD5 hex of the content, as S3 gives for single-part uploads; there are no
    versions (``version_id`` is None). Listing reads every object's header line: fine for a
    laptop's gallery, not for millions of objects.
    """

    def __init__(self, root: Path, bucket: str = "local") -> None:
        self.root = Path(root)
        self.bucket = bucket
        self._objects = self.root / "objects"
        try:
            self._objects.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create the local object store at {self.root}: {exc}") from exc

    def _path(self, key: str) -> Path:
        try:
            encoded = key.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidRequest("key", "an object key must be valid unicode") from exc
        if not 0 < len(encoded) <= MAX_KEY_BYTES:
            raise InvalidRequest("key", f"an object key is 1 to {MAX_KEY_BYTES} bytes of UTF-8")
        digest = hashlib.sha256(encoded).hexdigest()
        return self._objects / digest[:2] / digest

    def head(self, key: str) -> StoredObject | None:
        path = self._path(key)
        try:
            with path.open("rb") as file:
                header = _read_header(file)
                size = os.fstat(file.fileno()).st_size - file.tell()
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreUnavailable(f"cannot read the local object {key!r}: {exc}") from exc
        return StoredObject(key, size, header["etag"])

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            with path.open("rb") as file:
                _read_header(file)
                return file.read()
        except FileNotFoundError as exc:
            raise NotFound(f"no object {key!r} in {self.bucket}") from exc
        except (OSError, ValueError) as exc:
            raise StoreUnavailable(f"cannot read the local object {key!r}: {exc}") from exc

    def put(self, key: str, data: bytes, content_type: str | None = None) -> StoredObject:
        """Write the object whole: a temporary file in the same folder, then ``os.replace``."""
        path = self._path(key)
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        header = json.dumps({"key": key, "content_type": content_type, "etag": etag}).encode() + b"\n"
        try:
            write_atomically(path, header, data)
        except OSError as exc:
            raise StoreUnavailable(f"cannot write the local object {key!r}: {exc}") from exc
        return StoredObject(key, len(data), etag)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot delete the local object {key!r}: {exc}") from exc

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        """Objects whose key starts with ``prefix``, in key order (as S3 lists them)."""
        found = []
        try:
            for path in self._objects.glob("??/" + "[0-9a-f]" * 64):
                try:
                    file = path.open("rb")
                except FileNotFoundError:  # deleted since the glob saw it
                    continue
                with file:
                    header = _read_header(file)
                    if header["key"].startswith(prefix):
                        size = os.fstat(file.fileno()).st_size - file.tell()
                        found.append(StoredObject(header["key"], size, header["etag"]))
        except (OSError, ValueError) as exc:
            raise StoreUnavailable(f"cannot list the local object store at {self.root}: {exc}") from exc
        found.sort(key=lambda o: o.key)  # code point order is UTF-8 byte order, S3's order
        yield from found


def _read_header(file: Any) -> dict[str, Any]:
    line = file.readline()
    if not line.endswith(b"\n"):
        raise ValueError("object file has no header line")
    header: dict[str, Any] = json.loads(line)
    return header

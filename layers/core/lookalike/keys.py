"""The key layout that ties objects to their owners: ``<prefix><owner>/<name>``.

The owner is read from where an object is stored, never from anything a caller says, so
the same rule serves the upload trigger (S3 keys) and the API (the caller's prefix).

>>> owner_from_key("users/ann/holiday/beach.jpg", "users/")
'ann'
>>> owner_from_key("elsewhere/beach.jpg", "users/") is None
True
"""

from __future__ import annotations

from lookalike.errors import InvalidRequest

MAX_OWNER_LENGTH = 256
MAX_KEY_BYTES = 1024  # S3's limit on a key's UTF-8 length


def owner_from_key(key: str, prefix: str) -> str | None:
    """The owner encoded in ``key``, or None when the key is outside the owners' layout."""
    if not key.startswith(prefix):
        return None
    owner, sep, name = key[len(prefix) :].partition("/")
    if not sep or not owner or not name:
        return None
    return owner


def validate_owner(owner: str) -> str:
    """An owner id usable as one path segment; any other character is just data to the stores."""
    if not owner or len(owner) > MAX_OWNER_LENGTH or "/" in owner or "\x00" in owner:
        raise InvalidRequest("owner", f"must be 1 to {MAX_OWNER_LENGTH} characters without '/' or NUL")
    return owner


def validate_key(key: str) -> str:
    if not key or "\x00" in key or len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidRequest("key", f"must be 1 to {MAX_KEY_BYTES} bytes of UTF-8 without NUL")
    return key


def owner_key(owner: str, name: str, prefix: str) -> str:
    """The key of ``name`` under ``owner``'s prefix."""
    return validate_key(f"{prefix}{validate_owner(owner)}/{name.lstrip('/')}")

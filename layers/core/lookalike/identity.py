"""Identity: where an image is stored decides its id; what it contains decides its SHA-256.

>>> image_id("gallery", "users/ann/red flower.jpg") == image_id("gallery", "users/ann/red flower.jpg")
True
>>> len(image_id("gallery", "a.jpg"))
32
"""

from __future__ import annotations

import hashlib


def image_id(bucket: str, key: str) -> str:
    """A 128-bit id, the same in every store and every process, for (bucket, key).

    128 bits keep accidental collisions negligible at billions of images, where a
    64-bit id would not be (birthday bound). The NUL separator cannot occur in a bucket
    name, so ("a", "b/c") and ("a/b", "c") cannot collide by construction.
    """
    return hashlib.blake2b(f"{bucket}\x00{key}".encode(), digest_size=16).hexdigest()


def content_sha256(data: bytes) -> str:
    """SHA-256 of the original bytes: equal for byte-identical uploads (the `exact` tier)."""
    return hashlib.sha256(data).hexdigest()

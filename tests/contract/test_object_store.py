"""The ObjectStore contract, against every adapter (a local folder, S3 on moto's server)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import boto3
import pytest
import requests
from botocore.config import Config

from lookalike.adapters.local_objects import LocalObjectStore
from lookalike.adapters.s3_objects import S3ObjectStore
from lookalike.errors import InvalidRequest, NotFound, StoreUnavailable
from lookalike.ports import ObjectStore
from tests.contract import AWKWARD_KEY

UNICODE_KEYS = [AWKWARD_KEY, "ünïcødé/ファイル 1.jpg", "a%2Fb c.png", "a//double slash.gif", "a", "a/b"]


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def test_put_head_get_list_delete_round_trip(object_store: ObjectStore) -> None:
    # given an object put under an awkward key
    data = b"\xff\xd8\xff\xe0 not really a jpeg"
    put = object_store.put(AWKWARD_KEY, data, "image/jpeg")
    # when it is read back in every way
    head = object_store.head(AWKWARD_KEY)
    # then size, ETag (the MD5 hex, unquoted) and version agree, and the bytes are the same
    assert (put.key, put.size, put.etag) == (AWKWARD_KEY, len(data), md5(data))
    assert head == put
    assert object_store.get(AWKWARD_KEY) == data
    assert [(o.key, o.size, o.etag) for o in object_store.list()] == [(put.key, put.size, put.etag)]
    # and once deleted, it is gone everywhere
    object_store.delete(AWKWARD_KEY)
    assert object_store.head(AWKWARD_KEY) is None
    with pytest.raises(NotFound):
        object_store.get(AWKWARD_KEY)
    assert list(object_store.list()) == []


def test_a_missing_key_is_none_or_not_found_and_deleting_it_succeeds(object_store: ObjectStore) -> None:
    assert object_store.head("nothing/here.jpg") is None
    with pytest.raises(NotFound):
        object_store.get("nothing/here.jpg")
    object_store.delete("nothing/here.jpg")


def test_putting_again_replaces_the_object(object_store: ObjectStore) -> None:
    # given an object
    first = object_store.put("a.jpg", b"first")
    # when the same key is put again
    second = object_store.put("a.jpg", b"second version")
    # then the new bytes are served, under a new ETag, and the key is listed once
    assert object_store.get("a.jpg") == b"second version"
    assert second.etag != first.etag
    assert object_store.head("a.jpg") == second
    assert [o.key for o in object_store.list()] == ["a.jpg"]


def test_unicode_keys_are_kept_verbatim_and_listed_in_order(object_store: ObjectStore) -> None:
    # given objects under keys S3 accepts, some of them a prefix of another
    for n, key in enumerate(UNICODE_KEYS):
        object_store.put(key, f"object {n}".encode())
    # when listing everything, and by prefix
    listed = [o.key for o in object_store.list()]
    # then keys come back verbatim, in key order, each with its own bytes
    assert listed == sorted(UNICODE_KEYS)
    assert [o.key for o in object_store.list("a/")] == ["a//double slash.gif", "a/b"]
    assert [o.key for o in object_store.list("a/b")] == ["a/b"]
    assert [o.key for o in object_store.list("users/ann/")] == [AWKWARD_KEY]
    assert [o.key for o in object_store.list("nobody/")] == []
    for n, key in enumerate(UNICODE_KEYS):
        assert object_store.get(key) == f"object {n}".encode()


def test_put_reports_the_version_head_reports(object_store: ObjectStore) -> None:
    # given a versioned S3 bucket, or a folder (which has no versions)
    first = object_store.put("v.jpg", b"one")
    second = object_store.put("v.jpg", b"two")
    # then head reports the current version, and S3 gives each put a new one
    head = object_store.head("v.jpg")
    assert head is not None and head.version_id == second.version_id
    if isinstance(object_store, S3ObjectStore):
        assert first.version_id and second.version_id and first.version_id != second.version_id
    else:
        assert first.version_id is None and second.version_id is None


HOSTILE_KEYS = ["../../etc/passwd", "/etc/passwd", "..", ".", "a\x00b", "C:\\Windows\\win.ini", "../" * 300]


def test_local_keys_never_escape_the_root(tmp_path: Path) -> None:
    # given a local store in a folder of its own
    root = tmp_path / "bucket"
    store = LocalObjectStore(root)
    # when objects are put under keys that would be paths out of it
    for n, key in enumerate(HOSTILE_KEYS):
        store.put(key, f"object {n}".encode())
    # then every file is inside the root, and each key is stored and listed verbatim
    assert [p.name for p in tmp_path.iterdir()] == ["bucket"]
    assert all(root in path.parents for path in root.rglob("*"))
    assert [o.key for o in store.list()] == sorted(HOSTILE_KEYS)
    for n, key in enumerate(HOSTILE_KEYS):
        assert store.get(key) == f"object {n}".encode()


def test_local_store_survives_a_restart_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    # given objects written by one store
    LocalObjectStore(tmp_path).put(AWKWARD_KEY, b"kept")
    # when another store opens the same folder
    reopened = LocalObjectStore(tmp_path)
    # then the objects are there, and only whole objects are on disk
    assert reopened.get(AWKWARD_KEY) == b"kept"
    assert not list(tmp_path.rglob(".tmp-*"))


def test_local_store_refuses_keys_s3_refuses(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    for key in ("", "é" * 513, "\udc80"):
        with pytest.raises(InvalidRequest):
            store.put(key, b"x")


def test_presigned_upload_puts_one_object_under_its_policy(moto_endpoint: str) -> None:
    # given an S3 store and a presigned upload for one key, limited in size and type
    client = boto3.client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    client.create_bucket(Bucket="uploads")
    store = S3ObjectStore("uploads", client)
    upload = store.presigned_put(AWKWARD_KEY, 300, content_type="image/jpeg", max_bytes=1_000)
    # then the policy names the key, the type and the size range
    assert upload["method"] == "POST"
    policy = json.loads(base64.b64decode(upload["fields"]["policy"]))
    assert {"key": AWKWARD_KEY} in policy["conditions"]
    assert {"Content-Type": "image/jpeg"} in policy["conditions"]
    assert ["content-length-range", 1, 1_000] in policy["conditions"]
    # and when a client posts the form, the object lands under that key
    response = requests.post(upload["url"], data=upload["fields"], files={"file": ("x.jpg", b"jpeg bytes")}, timeout=10)
    assert response.status_code in (200, 201, 204)
    assert store.get(AWKWARD_KEY) == b"jpeg bytes"


def test_s3_failures_become_store_unavailable(moto_endpoint: str) -> None:
    # given a store whose endpoint does not answer, and one whose bucket does not exist
    dead = boto3.client(
        "s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )  # fmt: skip
    live = boto3.client(
        "s3", endpoint_url=moto_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    # when they are used, then every failure is a StoreUnavailable
    for store in (S3ObjectStore("gallery", dead), S3ObjectStore(f"absent-{os.getpid()}", live)):
        with pytest.raises(StoreUnavailable):
            store.put("a.jpg", b"x")
        with pytest.raises(StoreUnavailable):
            list(store.list())
    with pytest.raises(StoreUnavailable):
        S3ObjectStore("gallery", dead).head("a.jpg")

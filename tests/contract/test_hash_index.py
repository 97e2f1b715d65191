"""The HashIndex contract, against every adapter (SQLite, OpenSearch)."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace
from pathlib import Path
from typing import Literal, cast

import pytest
import requests
from botocore.credentials import Credentials
from opensearchpy import AWSV4SignerAuth, OpenSearch, RequestsHttpConnection, Urllib3HttpConnection
from osmem_server import OsmemServer

from lookalike.adapters.opensearch_hashes import OpenSearchHashIndex, opensearch_client
from lookalike.adapters.sqlite_hashes import SqliteHashIndex
from lookalike.errors import ConfigurationError, StoreUnavailable
from lookalike.hashing import DEFAULT_LAYOUT, HASH_BITS, PHash, SegmentLayout
from lookalike.identity import image_id
from lookalike.ports import HashIndex, ImageRecord
from tests.contract import AWKWARD_KEY, HOSTILE_OWNERS
from tests.contract.conftest import Backend


def make_record(owner: str, key: str, phash: PHash, *, bucket: str = "gallery", sha256: str = "") -> ImageRecord:
    return ImageRecord(
        id=image_id(bucket, f"{owner}/{key}"),
        owner=owner,
        key=key,
        sha256=sha256 or hashlib.sha256(f"{bucket}/{owner}/{key}".encode()).hexdigest(),
        phash=phash.hex,
        size=123_456,
        width=640,
        height=480,
        trim="none",
        indexed_at=1_767_225_600.25,
        model="vgg16-gmp-fp32",
    )


def flip_bits(h: PHash, count: int, rng: random.Random) -> PHash:
    """A hash exactly ``count`` bits away from ``h``."""
    value = h.value
    for bit in rng.sample(range(HASH_BITS), count):
        value ^= 1 << bit
    return PHash(value)


def random_hash(rng: random.Random) -> PHash:
    return PHash(rng.getrandbits(HASH_BITS))


def test_writing_the_same_record_twice_leaves_one(hash_index: HashIndex) -> None:
    # given a record
    record = make_record("ann", "a.jpg", PHash.from_hex("8a0303f6c3c3e0e1"))
    # when it is written twice, once in the same batch
    hash_index.upsert([record])
    hash_index.upsert([record, record])
    # then one entry exists, and every read finds it once
    assert hash_index.count("ann") == 1
    assert hash_index.count() == 1
    assert [r.id for r in hash_index.scan()] == [record.id]
    assert [h.record for h in hash_index.find_near("ann", PHash.from_hex(record.phash), 0, 10)] == [record]


def test_upsert_replaces_the_entry_with_the_same_id(hash_index: HashIndex) -> None:
    # given a record
    old = make_record("ann", "a.jpg", PHash.from_hex("8a0303f6c3c3e0e1"))
    hash_index.upsert([old])
    # when a record with the same id but a new hash and sha256 is written
    new = replace(old, phash="0123456789abcdef", sha256="f" * 64, size=7)
    hash_index.upsert([new])
    # then only the new one is found, by id, by hash and by sha256
    assert hash_index.get([old.id], "ann") == {old.id: new}
    assert hash_index.find_near("ann", PHash.from_hex(old.phash), 2, 10) == []
    assert [h.record for h in hash_index.find_near("ann", PHash.from_hex(new.phash), 0, 10)] == [new]
    assert hash_index.find_sha256("ann", old.sha256, 10) == []
    assert hash_index.find_sha256("ann", new.sha256, 10) == [new]


def test_deleting_missing_ids_succeeds(hash_index: HashIndex) -> None:
    # given one stored record
    kept, gone = (make_record("ann", f"{n}.jpg", PHash.from_hex("8a0303f6c3c3e0e1")) for n in "ab")
    hash_index.upsert([kept, gone])
    # when deleting ids that were never there, alone and beside an existing one
    hash_index.delete(["0" * 32, "not-an-id"])
    hash_index.delete([gone.id, "0" * 32, gone.id])
    hash_index.delete([])
    # then only the existing one went
    assert hash_index.get([kept.id, gone.id], None) == {kept.id: kept}
    assert hash_index.count() == 1


def test_records_round_trip_verbatim(hash_index: HashIndex) -> None:
    # given records with an awkward key and hashes at the edges of 64 bits (sign bit set or not)
    records = [
        make_record("ann", AWKWARD_KEY, PHash.from_hex("ffffffffffffffff")),
        make_record("ann", AWKWARD_KEY + " (copy)", PHash.from_hex("8000000000000000")),
        make_record("ann", "zero.png", PHash.from_hex("0000000000000000")),
        make_record("ann", "high.png", PHash.from_hex("7fffffffffffffff")),
    ]
    # when they are written and read back by id, by hash and by sha256
    hash_index.upsert(records)
    by_id = hash_index.get([r.id for r in records], "ann")
    # then every field comes back as written
    assert by_id == {r.id: r for r in records}
    for r in records:
        assert [h.record for h in hash_index.find_near("ann", PHash.from_hex(r.phash), 0, 10)] == [r]
        assert hash_index.find_sha256("ann", r.sha256, 10) == [r]


def test_an_owner_never_sees_another_owners_entries(hash_index: HashIndex) -> None:
    # given owners with hostile ids, each holding an image identical to everyone else's
    phash, sha256 = PHash.from_hex("8a0303f6c3c3e0e1"), "ab" * 32
    owners = ["victim", *HOSTILE_OWNERS]
    records = {o: make_record(o, "same.jpg", phash, sha256=sha256) for o in owners}
    hash_index.upsert(list(records.values()))
    all_ids = [r.id for r in records.values()]
    for owner, own in records.items():
        # when each owner reads by id, by hash and by sha256
        # then it sees its own entry and nothing else
        assert hash_index.get(all_ids, owner) == {own.id: own}, owner
        assert [h.record for h in hash_index.find_near(owner, phash, 8, 100)] == [own], owner
        assert hash_index.find_sha256(owner, sha256, 100) == [own], owner
        assert hash_index.count(owner) == 1, owner
    # and an owner that does not exist sees nothing, while maintenance (owner None) sees all
    assert hash_index.find_near("nobody", phash, 8, 100) == []
    assert hash_index.count() == len(owners)
    assert hash_index.get(all_ids, None).keys() == set(all_ids)


@pytest.mark.parametrize(
    ("widths", "max_distance"),
    [
        pytest.param(DEFAULT_LAYOUT.widths, 0, id="default-r0"),
        pytest.param(DEFAULT_LAYOUT.widths, 4, id="default-r4"),
        pytest.param(DEFAULT_LAYOUT.widths, min(8, DEFAULT_LAYOUT.max_distance), id="default-r8"),
        pytest.param(DEFAULT_LAYOUT.widths, DEFAULT_LAYOUT.max_distance, id="default-rmax"),
        pytest.param((8,) * 8, 3, id="8x8-r3"),
        pytest.param((10, 10, 10, 10, 12, 12), 5, id="uneven-r5"),
    ],
)
def test_find_near_returns_exactly_the_brute_force_set_in_order(
    hash_backend: Backend, widths: tuple[int, ...], max_distance: int
) -> None:
    # given random hashes, and neighbours of a query planted at every distance 0..r+2 (two per
    # distance, plus two sharing a key under different ids, to exercise every tie-break)
    layout = SegmentLayout(widths)
    index: HashIndex = hash_backend.open(layout)
    rng = random.Random(f"{widths}{max_distance}")
    query = random_hash(rng)
    records = [make_record("ann", f"random/{n:03d}.jpg", random_hash(rng)) for n in range(200)]
    for distance in range(max_distance + 3):
        for copy in "ba":  # keys written out of order
            records.append(make_record("ann", f"near/{distance:02d}{copy}.jpg", flip_bits(query, distance, rng)))
    twin = flip_bits(query, max_distance, rng)
    records += [make_record("ann", "twin.jpg", twin, bucket=b) for b in ("one", "two")]
    decoy = make_record("bob", "near/00a.jpg", query)
    index.upsert([*records, decoy])
    # when the query looks for everything within r
    hits = index.find_near("ann", query, max_distance, limit=10_000)
    # then it gets exactly what brute force finds, ordered by (distance, key, id)
    expected = sorted(
        (query.distance(PHash.from_hex(r.phash)), r.key, r.id)
        for r in records
        if query.distance(PHash.from_hex(r.phash)) <= max_distance
    )
    assert [(h.distance, h.record.key, h.record.id) for h in hits] == expected
    assert len(expected) >= 2 * (max_distance + 1) + 2  # the planted ones, at least
    for hit in hits:
        stored = PHash.from_hex(hit.record.phash)
        assert hit.distance == query.distance(stored)
        assert hit.segments_matched == layout.matched(query, stored)
    # and a smaller limit returns the first entries of the same order
    assert index.find_near("ann", query, max_distance, limit=3) == hits[:3]


def test_find_sha256_orders_by_key_then_id_and_honours_the_limit(hash_index: HashIndex) -> None:
    # given byte-identical images under several keys, two of them under the same key
    sha256 = "cd" * 32
    phash = PHash.from_hex("8a0303f6c3c3e0e1")
    same = [make_record("ann", k, phash, sha256=sha256) for k in ("c.jpg", "a.jpg", "b.jpg")]
    same += [make_record("ann", "a.jpg", phash, sha256=sha256, bucket=b) for b in ("x", "y")]
    other = make_record("ann", "0.jpg", phash)
    hash_index.upsert([*same, other])
    # when looking them up by sha256
    found = hash_index.find_sha256("ann", sha256, 100)
    # then all of them come back, by key then id, and the limit cuts that order
    assert found == sorted(same, key=lambda r: (r.key, r.id))
    assert hash_index.find_sha256("ann", sha256, 2) == found[:2]


def test_scan_and_count_see_everything(hash_index: HashIndex) -> None:
    # given more records than one page of a scan, over three owners
    rng = random.Random(7)
    records = [make_record(f"owner{n % 3}", f"{n:05d}.jpg", random_hash(rng)) for n in range(1_100)]
    hash_index.upsert(records)
    # when scanning and counting
    scanned = list(hash_index.scan())
    # then every record is seen exactly once, and counts add up per owner
    assert len(scanned) == len(records)
    assert {r.id: r for r in scanned} == {r.id: r for r in records}
    assert [hash_index.count(f"owner{n}") for n in range(3)] == [367, 367, 366]
    assert hash_index.count() == 1_100


def test_a_reopened_index_keeps_its_records(hash_backend: Backend) -> None:
    # given a record written through one adapter
    record = make_record("ann", AWKWARD_KEY, PHash.from_hex("8a0303f6c3c3e0e1"))
    hash_backend.open(DEFAULT_LAYOUT).upsert([record])
    # when the index is opened again on the same storage
    reopened: HashIndex = hash_backend.open(DEFAULT_LAYOUT)
    # then the record is there
    assert reopened.get([record.id], "ann") == {record.id: record}


def test_an_index_refuses_a_different_segment_layout(hash_backend: Backend) -> None:
    # given an index built with the default layout
    hash_backend.open(DEFAULT_LAYOUT).upsert([make_record("ann", "a.jpg", PHash.from_hex("8a0303f6c3c3e0e1"))])
    other = SegmentLayout((8,) * 8 if DEFAULT_LAYOUT.widths != (8,) * 8 else (4,) * 16)
    # when it is opened with another layout, then that is a configuration error
    with pytest.raises(ConfigurationError, match="widths"):
        hash_backend.open(other)


def test_a_failed_bulk_write_names_the_ids_that_failed(osmem_server: OsmemServer) -> None:
    """OpenSearch only: a bulk write can fail per document (SQLite's batch is one transaction)."""
    clone = osmem_server.clone()
    index = OpenSearchHashIndex(OpenSearch(hosts=[clone.url]), refresh=True)
    index.ensure_index()
    # given a batch where one document breaks the strict mapping (a width that is not a number)
    good = make_record("ann", "good.jpg", PHash.from_hex("8a0303f6c3c3e0e1"))
    bad = replace(make_record("ann", "bad.jpg", PHash.from_hex("8a0303f6c3c3e0e1")), width=cast(int, "wide"))
    # when it is written, then the failure names the bad id, and the good one is stored
    with pytest.raises(StoreUnavailable, match=bad.id):
        index.upsert([good, bad])
    assert index.get([good.id, bad.id], "ann").keys() == {good.id}
    clone.close()


def test_find_near_warns_when_its_candidate_cap_is_reached(
    osmem_server: OsmemServer, caplog: pytest.LogCaptureFixture
) -> None:
    """OpenSearch only: SQLite reads every candidate, OpenSearch returns at most a page of them."""
    clone = osmem_server.clone()
    index = OpenSearchHashIndex(OpenSearch(hosts=[clone.url]), refresh=True, candidate_cap=5)
    index.ensure_index()
    # given more exact duplicates than the candidate cap
    phash = PHash.from_hex("8a0303f6c3c3e0e1")
    index.upsert([make_record("ann", f"{n}.jpg", phash) for n in range(8)])
    # when looking for them, then the cap bounds the answer and a warning says so
    with caplog.at_level("WARNING", logger="lookalike.adapters.opensearch_hashes"):
        hits = index.find_near("ann", phash, 0, 100)
    assert len(hits) == 5
    assert "cap of 5 candidates" in caplog.text
    clone.close()


def test_store_failures_become_store_unavailable(tmp_path: Path) -> None:
    # given an OpenSearch that does not answer, and a SQLite index that was closed
    dead = OpenSearchHashIndex(OpenSearch(hosts=["http://127.0.0.1:9"], max_retries=0, timeout=1))
    closed = SqliteHashIndex(tmp_path / "closed.sqlite")
    closed.close()
    record = make_record("ann", "a.jpg", PHash.from_hex("8a0303f6c3c3e0e1"))
    for index in (dead, closed):
        # when they are used, then every failure is a StoreUnavailable
        with pytest.raises(StoreUnavailable):
            index.upsert([record])
        with pytest.raises(StoreUnavailable):
            index.find_near("ann", PHash.from_hex(record.phash), 2, 10)
        with pytest.raises(StoreUnavailable):
            index.count()
    with pytest.raises(StoreUnavailable):
        dead.ensure_index()


@pytest.mark.parametrize("auth", ["es", "aoss"])
def test_opensearch_client_signs_for_the_right_service(auth: Literal["es", "aoss"]) -> None:
    # given a client for a managed domain (es) or a Serverless collection (aoss)
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    url = "https://search-gallery.eu-west-1.es.amazonaws.com"
    client = opensearch_client(url, auth=auth, region="eu-west-1", credentials=credentials)
    connection = client.transport.get_connection()
    # then it goes through requests with a SigV4 signer for that service, verifying certificates
    assert isinstance(connection, RequestsHttpConnection)
    signer = connection.session.auth
    assert isinstance(signer, AWSV4SignerAuth)
    assert signer.service == auth
    assert connection.session.verify
    # and a request it sends is signed for that region and service (signed here, not sent)
    request = requests.Request("GET", f"{url}/_search").prepare()
    assert f"/eu-west-1/{auth}/aws4_request" in signer(request).headers["Authorization"]


def test_opensearch_client_finds_default_credentials_and_needs_a_region(monkeypatch: pytest.MonkeyPatch) -> None:
    # given credentials only in the environment (botocore's default chain)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    url = "https://search-gallery.eu-west-1.es.amazonaws.com"
    # when a signed client is built without explicit credentials, then it signs with those
    signer = opensearch_client(url, auth="es", region="eu-west-1").transport.get_connection().session.auth
    assert signer.signer.credentials.access_key == "AKIDFROMENV"
    # and a signed client without a region, or an unknown auth mode, is a configuration error
    with pytest.raises(ConfigurationError, match="region"):
        opensearch_client(url, auth="aoss")
    with pytest.raises(ConfigurationError):
        opensearch_client(url, auth="basic")  # type: ignore[arg-type]


def test_an_unsigned_client_is_plain_and_serverless_refuses_refresh() -> None:
    # given an unsigned client for a local server
    client = opensearch_client("http://localhost:9200")
    # then it is a plain connection without TLS
    connection = client.transport.get_connection()
    assert isinstance(connection, Urllib3HttpConnection)
    assert not connection.use_ssl
    # and an index on a Serverless client cannot be asked to refresh on writes
    credentials = Credentials("AKIDEXAMPLE", "secret")
    serverless = opensearch_client("https://x.eu-west-1.aoss.amazonaws.com", auth="aoss", region="eu-west-1",
                                   credentials=credentials)  # fmt: skip
    with pytest.raises(ConfigurationError, match="refresh"):
        OpenSearchHashIndex(serverless, refresh="wait_for")
    OpenSearchHashIndex(serverless)  # the default, no refresh, is fine

"""The VectorIndex contract, against every adapter (Milvus Lite, and a Milvus server when configured)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from lookalike.adapters.milvus import MilvusVectorIndex
from lookalike.errors import ConfigurationError, InvalidRequest
from lookalike.identity import image_id
from lookalike.ports import MAX_SEARCH_DEPTH, VectorEntry, VectorIndex
from tests.contract import AWKWARD_KEY, HOSTILE_OWNERS
from tests.contract.conftest import DIMENSION, Backend

Vector = npt.NDArray[np.float32]


def unit_vectors(count: int, seed: int) -> Vector:
    """Random directions, L2-normalised like the feature model's output."""
    vectors = np.random.default_rng(seed).normal(size=(count, DIMENSION)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def make_entry(owner: str, key: str, vector: Vector, *, bucket: str = "gallery") -> VectorEntry:
    id_ = image_id(bucket, f"{owner}/{key}")
    return VectorEntry(id=id_, owner=owner, key=key, sha256=id_ * 2, model="vgg16-gmp-fp32", vector=vector)


def brute_force(entries: list[VectorEntry], query: Vector) -> list[tuple[str, float]]:
    """(id, similarity) most similar first, ties (at 6 decimals) by id: what search must return."""
    scored = [(e.id, round(float(np.dot(e.vector, query)), 6)) for e in entries]
    return sorted(scored, key=lambda pair: (-pair[1], pair[0]))


def test_writing_the_same_entry_twice_leaves_one(vector_index: VectorIndex) -> None:
    # given an entry
    entry = make_entry("ann", "a.jpg", unit_vectors(1, seed=1)[0])
    # when it is written twice, once in the same batch
    vector_index.upsert([entry])
    vector_index.upsert([entry, entry])
    # then one entry exists, and search finds it once
    assert vector_index.count("ann") == 1
    assert vector_index.count() == 1
    assert list(vector_index.scan_ids()) == [(entry.id, entry.sha256)]
    assert [h.id for h in vector_index.search("ann", entry.vector, 10)] == [entry.id]


def test_upsert_replaces_the_entry_with_the_same_id(vector_index: VectorIndex) -> None:
    # given an entry
    old_vector, new_vector = unit_vectors(2, seed=2)
    old = make_entry("ann", "a.jpg", old_vector)
    vector_index.upsert([old])
    # when an entry with the same id but another vector and key is written
    new = VectorEntry(old.id, "ann", "b.jpg", old.sha256, old.model, new_vector)
    vector_index.upsert([new])
    # then reads return the new one only
    stored = vector_index.get([old.id], "ann")[old.id]
    assert stored.key == "b.jpg"
    np.testing.assert_allclose(stored.vector, new_vector, atol=1e-6)
    [hit] = vector_index.search("ann", new_vector, 10)
    assert (hit.id, hit.key, hit.similarity) == (old.id, "b.jpg", pytest.approx(1.0, abs=1e-5))


def test_deleting_missing_ids_succeeds(vector_index: VectorIndex) -> None:
    # given two entries
    kept, gone = (make_entry("ann", f"{n}.jpg", v) for n, v in zip("ab", unit_vectors(2, seed=3), strict=True))
    vector_index.upsert([kept, gone])
    # when deleting ids that were never there, alone and beside an existing one
    vector_index.delete(["0" * 32, 'x" or id != "'])
    vector_index.delete([gone.id, "0" * 32, gone.id])
    vector_index.delete([])
    # then only the existing one went
    assert vector_index.get([kept.id, gone.id], None).keys() == {kept.id}
    assert vector_index.count() == 1


def test_get_returns_what_was_written(vector_index: VectorIndex) -> None:
    # given entries with an awkward key
    vectors = unit_vectors(3, seed=4)
    entries = [make_entry("ann", f"{AWKWARD_KEY}{n}", vectors[n]) for n in range(3)]
    vector_index.upsert(entries)
    # when read back by id
    found = vector_index.get([e.id for e in entries] + ["0" * 32], "ann")
    # then every field is as written, the vector to float precision
    assert found.keys() == {e.id for e in entries}
    for e in entries:
        got = found[e.id]
        assert (got.id, got.owner, got.key, got.sha256, got.model) == (e.id, e.owner, e.key, e.sha256, e.model)
        assert got.vector.dtype == np.float32
        np.testing.assert_allclose(got.vector, e.vector, atol=1e-6)


def test_an_owner_never_sees_another_owners_entries(vector_index: VectorIndex) -> None:
    # given owners with hostile ids, each holding the very same vector
    vector = unit_vectors(1, seed=5)[0]
    owners = ["victim", *HOSTILE_OWNERS]
    entries = {o: make_entry(o, "same.jpg", vector) for o in owners}
    vector_index.upsert(list(entries.values()))
    all_ids = [e.id for e in entries.values()]
    for owner, own in entries.items():
        # when each owner searches, reads by id and counts
        # then it sees its own entry and nothing else
        assert [h.id for h in vector_index.search(owner, vector, 100)] == [own.id], owner
        assert vector_index.get(all_ids, owner).keys() == {own.id}, owner
        assert vector_index.count(owner) == 1, owner
    # and maintenance (owner None) sees them all
    assert vector_index.count() == len(owners)
    assert vector_index.get(all_ids, None).keys() == set(all_ids)


def test_search_orders_by_similarity_then_id_and_pages_are_stable(vector_index: VectorIndex) -> None:
    # given random entries, and two groups of identical vectors under different ids (ties)
    vectors = unit_vectors(42, seed=6)
    entries = [make_entry("ann", f"{n:02d}.jpg", vectors[n]) for n in range(40)]
    entries += [make_entry("ann", f"tie-a/{n}.jpg", vectors[40]) for n in range(5)]
    entries += [make_entry("ann", f"tie-b/{n}.jpg", vectors[41]) for n in range(4)]
    vector_index.upsert(entries)
    query = vectors[40] + 0.8 * vectors[41]
    query /= np.linalg.norm(query)
    expected = brute_force(entries, query)
    # when searching at limit L and at limit 2L
    for limit in (1, 3, 6, 8, 11):
        page = vector_index.search("ann", query, limit)
        double = vector_index.search("ann", query, 2 * limit)
        # then the order is (similarity, id), as brute force gives it, and L is a prefix of 2L
        assert [h.id for h in double] == [i for i, _ in expected[: 2 * limit]]
        assert page == double[:limit]
    # and ties really are there: the first group shares one similarity, ordered by id
    top = vector_index.search("ann", query, 5)
    assert len({h.similarity for h in top}) == 1
    assert [h.id for h in top] == sorted(e.id for e in entries if e.key.startswith("tie-a/"))


def test_min_similarity_cuts_the_tail(vector_index: VectorIndex) -> None:
    # given entries at spread-out similarities to a query
    vectors = unit_vectors(30, seed=7)
    query = vectors[0]
    entries = [make_entry("ann", f"{n:02d}.jpg", (query * (30 - n) / 30 + vectors[n])) for n in range(30)]
    entries = [
        VectorEntry(e.id, e.owner, e.key, e.sha256, e.model, (e.vector / np.linalg.norm(e.vector)).astype(np.float32))
        for e in entries
    ]
    vector_index.upsert(entries)
    everything = vector_index.search("ann", query, 30)
    threshold = everything[10].similarity
    # when searching with a minimum similarity
    hits = vector_index.search("ann", query, 30, min_similarity=threshold)
    # then exactly the hits at or above it remain, in the same order
    assert hits == [h for h in everything if h.similarity >= threshold]
    assert len(hits) == 11 and all(h.similarity >= threshold for h in hits)


def test_search_limit_must_be_within_the_search_depth(vector_index: VectorIndex) -> None:
    # given one entry
    entry = make_entry("ann", "a.jpg", unit_vectors(1, seed=8)[0])
    vector_index.upsert([entry])
    # when the limit is out of range, then the request is invalid
    for limit in (0, -1, MAX_SEARCH_DEPTH + 1):
        with pytest.raises(InvalidRequest) as raised:
            vector_index.search("ann", entry.vector, limit)
        assert raised.value.parameter == "limit"
    # and the deepest page allowed works
    assert [h.id for h in vector_index.search("ann", entry.vector, MAX_SEARCH_DEPTH)] == [entry.id]


def test_a_vector_of_the_wrong_shape_is_refused(vector_index: VectorIndex) -> None:
    short = np.ones(DIMENSION - 1, dtype=np.float32)
    with pytest.raises(InvalidRequest):
        vector_index.search("ann", short, 10)
    with pytest.raises(InvalidRequest):
        vector_index.upsert([make_entry("ann", "a.jpg", short)])
    assert vector_index.count() == 0


def test_scan_ids_and_count_see_everything(vector_index: VectorIndex) -> None:
    # given more entries than one scan batch, over three owners
    vectors = unit_vectors(1_100, seed=9)
    entries = [make_entry(f"owner{n % 3}", f"{n:05d}.jpg", vectors[n]) for n in range(1_100)]
    vector_index.upsert(entries)
    # when scanning and counting
    scanned = list(vector_index.scan_ids())
    # then every entry is seen exactly once, and counts add up per owner
    assert sorted(scanned) == sorted((e.id, e.sha256) for e in entries)
    assert [vector_index.count(f"owner{n}") for n in range(3)] == [367, 367, 366]
    assert vector_index.count() == 1_100


def test_an_index_refuses_a_collection_of_another_dimension(vector_backend: Backend) -> None:
    # given a collection made for DIMENSION-d vectors
    vector_backend.open(DIMENSION)
    # when it is opened for another dimension, then that is a configuration error
    with pytest.raises(ConfigurationError, match="dimension"):
        vector_backend.open(DIMENSION // 2)


def test_milvus_lite_keeps_entries_across_a_restart(tmp_path: Path) -> None:
    # given entries written to a Milvus Lite file
    from milvus_lite.server_manager import server_manager_instance

    path = str(tmp_path / "restart.db")
    entries = [make_entry("ann", f"{n}.jpg", v) for n, v in enumerate(unit_vectors(3, seed=10))]
    first = MilvusVectorIndex(uri=path, collection="restart", dimension=DIMENSION)
    first.upsert(entries)
    first.close()
    # when its server stops (as at process exit) and a new index opens the file (the collection
    # comes back released, and must be loaded)
    server_manager_instance.release_server(path)
    second = MilvusVectorIndex(uri=path, collection="restart", dimension=DIMENSION)
    try:
        # then the entries are searchable
        assert second.count("ann") == 3
        assert [h.id for h in second.search("ann", entries[1].vector, 1)] == [entries[1].id]
    finally:
        second.close()
        server_manager_instance.release_server(path)


def test_a_cosine_never_exceeds_one_whatever_the_float_rounding(vector_index: VectorIndex) -> None:
    # given unit vectors a few float32 ulps too long, as normalising in float32 can leave them
    vectors = unit_vectors(200, seed=11) * np.float32(1 + 4e-6)
    vector_index.upsert([make_entry("ann", f"{n:03d}.jpg", v) for n, v in enumerate(vectors)])
    # when each is searched for itself
    best = [vector_index.search("ann", v, 1)[0].similarity for v in vectors[:40]]
    # then it is found as exactly as alike as can be, and no more
    assert max(best) == 1.0
    assert min(best) > 0.9999

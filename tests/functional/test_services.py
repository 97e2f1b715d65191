"""Index and search services over the real embedded stores (Milvus Lite, SQLite) and real photos."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lookalike.adapters.milvus import MilvusVectorIndex
from lookalike.adapters.sqlite_hashes import SqliteHashIndex
from lookalike.errors import ImageRejected, InvalidRequest, NotFound, StoreUnavailable
from lookalike.identity import image_id
from lookalike.ports import HashIndex, ImageRecord, VectorEntry, VectorIndex
from lookalike.services import IndexService, SearchService
from lookalike.services.indexing import IndexRequest
from lookalike.signatures import SignatureExtractor
from lookalike.thresholds import Thresholds
from tests.conftest import jpeg

BUCKET = "gallery"
OWNER = "ann"
GALLERY_SIZE = 24


def letterboxed(image: Image.Image, fraction: float = 0.15) -> Image.Image:
    bar = int(image.height * fraction)
    canvas = Image.new("RGB", (image.width, image.height + 2 * bar))
    canvas.paste(image, (0, bar))
    return canvas


def watermarked(image: Image.Image) -> Image.Image:
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    ImageDraw.Draw(layer).text((10, image.height // 3), "© lookalike", fill=(255, 255, 255, 140), font_size=48)
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


@dataclass
class Gallery:
    indexer: IndexService
    searcher: SearchService
    hashes: HashIndex
    vectors: VectorIndex
    photos: list[Path]

    def key(self, photo: Path, owner: str = OWNER) -> str:
        return f"users/{owner}/{photo.name}"


def make_services(root: Path, extractor: SignatureExtractor, hashes: HashIndex | None = None) -> Gallery:
    hashes = hashes or SqliteHashIndex(root / "hashes.sqlite")
    vectors = MilvusVectorIndex(uri=str(root / "vectors.db"), dimension=512)
    indexer = IndexService(extractor, hashes, vectors, bucket=BUCKET)
    searcher = SearchService(extractor, hashes, vectors, bucket=BUCKET, owner_prefix="users/", defaults=Thresholds())
    return Gallery(indexer, searcher, hashes, vectors, [])


@pytest.fixture(scope="module")
def extractor(feature_model: Any) -> SignatureExtractor:
    return SignatureExtractor(feature_model)


@pytest.fixture(scope="module")
def gallery(
    tmp_path_factory: pytest.TempPathFactory, extractor: SignatureExtractor, photos: list[Path]
) -> Iterator[Gallery]:
    """24 photos from across the dataset, indexed once for the read-only tests of this module."""
    g = make_services(tmp_path_factory.mktemp("gallery"), extractor)
    g.photos = photos[:: len(photos) // GALLERY_SIZE][:GALLERY_SIZE]
    g.indexer.index_many([IndexRequest(g.key(p), p.read_bytes(), OWNER) for p in g.photos])
    yield g
    g.hashes.close()
    g.vectors.close()


@pytest.fixture
def empty(tmp_path: Path, extractor: SignatureExtractor) -> Iterator[Gallery]:
    g = make_services(tmp_path, extractor)
    yield g
    g.hashes.close()
    g.vectors.close()


# --- searching -------------------------------------------------------------------------------


def test_the_same_bytes_are_an_exact_hit(gallery: Gallery) -> None:
    photo = gallery.photos[3]

    result = gallery.searcher.search_image(photo.read_bytes(), OWNER)

    assert [h.key for h in result.exact] == [gallery.key(photo)]
    assert result.exact[0].signals[0] == "sha256"
    assert gallery.key(photo) not in {h.key for h in result.duplicates + result.similar}


@pytest.mark.parametrize(
    "edit",
    [
        lambda im: jpeg(im, quality=20),
        lambda im: jpeg(letterboxed(im)),
        lambda im: jpeg(watermarked(im)),
        lambda im: jpeg(im.resize((im.width // 2, im.height // 2))),
    ],
    ids=["jpeg-q20", "letterbox", "watermark", "half-size"],
)
def test_an_edited_copy_finds_its_original_first_among_duplicates(gallery: Gallery, edit: Any) -> None:
    found_first = 0
    for photo in gallery.photos[:8]:
        result = gallery.searcher.search_image(edit(Image.open(photo).convert("RGB")), OWNER)
        if result.duplicates and result.duplicates[0].key == gallery.key(photo):
            found_first += 1
            hit = result.duplicates[0]
            assert hit.similarity is not None and hit.distance is not None
            assert hit.signals

    assert found_first == 8


def test_a_copy_that_both_signals_only_half_recognise_is_still_a_duplicate(empty: Gallery, photos: list[Path]) -> None:
    # The armadillo under lookalike.edits' large text watermark: its pHash lands 12 bits away
    # and its cosine at 0.745, each short of its own threshold (8 bits, 0.77).
    from lookalike.edits import edited_upload
    from lookalike.evaluation import load_photo

    armadillo = next(p for p in photos if p.name == "n02454379_armadillo.JPEG")
    others = [p for p in photos[::25] if p != armadillo][:12]
    empty.indexer.index_many([IndexRequest(empty.key(p), p.read_bytes(), OWNER) for p in [armadillo, *others]])
    query = edited_upload(
        load_photo(armadillo), "text_watermark", seed=0, photo_name="imagenet-samples-odd/" + armadillo.name
    )

    result = empty.searcher.search_image(query, OWNER)

    (hit,) = result.duplicates
    assert hit.key == empty.key(armadillo)
    assert hit.distance is not None and 8 < hit.distance <= 12
    assert hit.similarity is not None and 0.67 <= hit.similarity < 0.77
    assert hit.signals == ("phash", "vector")
    # and with the joint rule's reach taken away (distance 4: 8 bits of slack short), it is not
    strict = empty.searcher.search_image(query, OWNER, thresholds=Thresholds(duplicate_distance=4))
    assert empty.key(armadillo) not in {h.key for h in strict.duplicates}


def test_a_letterboxed_query_says_its_borders_were_trimmed(gallery: Gallery) -> None:
    photo = gallery.photos[0]

    result = gallery.searcher.search_image(jpeg(letterboxed(Image.open(photo))), OWNER)

    assert result.query.trim == "black"
    assert result.duplicates[0].distance is not None and result.duplicates[0].distance <= 8


def test_a_photo_not_in_the_gallery_is_nobody_s_duplicate(gallery: Gallery, photos: list[Path]) -> None:
    outsiders = [p for p in photos[-10:] if p not in gallery.photos]

    false_duplicates = [p.name for p in outsiders if gallery.searcher.search_image(p.read_bytes(), OWNER).duplicates]

    assert false_duplicates == []


def test_similar_images_are_paginated_deterministically_and_without_repeats(gallery: Gallery) -> None:
    query = gallery.photos[5].read_bytes()
    loose = Thresholds(min_similarity=0.0)

    pages = []
    for page in range(1, 10):
        result = gallery.searcher.search_image(query, OWNER, page=page, page_size=5, thresholds=loose)
        pages.append(result.similar)
        if not result.has_more:
            break
    walked = [hit.key for page in pages for hit in page]
    similarities = [hit.similarity or 0.0 for page in pages for hit in page]
    again = gallery.searcher.search_image(query, OWNER, page=2, page_size=5, thresholds=loose)

    assert len(walked) == len(set(walked))
    assert len(walked) + 1 == GALLERY_SIZE  # everything but the exact copy itself
    assert [h.key for h in again.similar] == [h.key for h in pages[1]]
    assert similarities == sorted(similarities, reverse=True)


def test_similarity_threshold_holds(gallery: Gallery) -> None:
    result = gallery.searcher.search_image(
        gallery.photos[1].read_bytes(), OWNER, thresholds=Thresholds(min_similarity=0.6)
    )

    assert all(h.similarity is not None and h.similarity >= 0.6 for h in result.similar + result.duplicates)


@pytest.mark.parametrize(
    ("options", "parameter"),
    [
        ({"page": 0}, "page"),
        ({"page_size": 0}, "page_size"),
        ({"page_size": 101}, "page_size"),
        ({"page": 10_000, "page_size": 100}, "page"),
        ({"thresholds": Thresholds(duplicate_distance=40)}, "duplicate_distance"),
    ],
)
def test_out_of_range_requests_name_the_parameter(gallery: Gallery, options: dict[str, Any], parameter: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        gallery.searcher.search_image(gallery.photos[0].read_bytes(), OWNER, **options)

    assert error.value.parameter == parameter


def test_search_by_key_uses_the_stored_signatures_and_skips_itself(gallery: Gallery) -> None:
    photo = gallery.photos[2]

    by_key = gallery.searcher.search_key(gallery.key(photo), OWNER, thresholds=Thresholds(min_similarity=0.0))
    by_bytes = gallery.searcher.search_image(photo.read_bytes(), OWNER, thresholds=Thresholds(min_similarity=0.0))

    assert by_key.exact == []
    assert [h.key for h in by_key.similar] == [h.key for h in by_bytes.similar]


def test_another_owners_key_is_answered_like_a_missing_one(gallery: Gallery) -> None:
    key = gallery.key(gallery.photos[0])

    with pytest.raises(NotFound) as foreign:
        gallery.searcher.search_key(key, "mallory")
    with pytest.raises(NotFound) as missing:
        gallery.searcher.search_key("users/mallory/nothing.jpg", "mallory")
    with pytest.raises(NotFound):
        gallery.searcher.record(key, "mallory")

    assert type(foreign.value) is type(missing.value)


@pytest.mark.parametrize("owner", ['ann" || owner != "', "ann' OR '1'='1", "*", "ann\\"])
def test_hostile_owner_ids_see_nothing(gallery: Gallery, owner: str) -> None:
    result = gallery.searcher.search_image(
        gallery.photos[0].read_bytes(), owner, thresholds=Thresholds(min_similarity=0.0)
    )

    assert result.exact == result.duplicates == result.similar == []


# --- indexing --------------------------------------------------------------------------------


def test_indexing_twice_leaves_one_entry_and_reports_unchanged(empty: Gallery, photos: list[Path]) -> None:
    key, data = "users/ann/a.jpg", photos[0].read_bytes()

    first = empty.indexer.index(key, data, OWNER)
    second = empty.indexer.index(key, data, OWNER, skip_unchanged=True)
    third = empty.indexer.index(key, data, OWNER)

    assert (first.status, second.status, third.status) == ("indexed", "unchanged", "indexed")
    assert empty.hashes.count() == empty.vectors.count() == 1


def test_a_rejected_image_writes_nothing(empty: Gallery) -> None:
    with pytest.raises(ImageRejected) as rejection:
        empty.indexer.index("users/ann/notes.jpg", b"this is not a picture", OWNER)

    assert rejection.value.reason == "not_an_image"
    assert empty.hashes.count() == empty.vectors.count() == 0


def test_a_batch_with_a_rejected_image_indexes_the_others(empty: Gallery, photos: list[Path]) -> None:
    requests = [
        IndexRequest("users/ann/a.jpg", photos[0].read_bytes(), OWNER),
        IndexRequest("users/ann/empty.jpg", b"", OWNER),
        IndexRequest("users/ann/b.jpg", photos[1].read_bytes(), OWNER),
    ]

    outcomes = empty.indexer.index_many(requests)

    assert [getattr(o, "status", getattr(o, "reason", None)) for o in outcomes] == ["indexed", "empty", "indexed"]
    assert empty.hashes.count() == empty.vectors.count() == 2


def test_an_overwrite_replaces_the_old_image(empty: Gallery, photos: list[Path]) -> None:
    key = "users/ann/a.jpg"
    empty.indexer.index(key, photos[0].read_bytes(), OWNER)

    empty.indexer.index(key, photos[1].read_bytes(), OWNER)

    old = empty.searcher.search_image(photos[0].read_bytes(), OWNER)
    new = empty.searcher.search_image(photos[1].read_bytes(), OWNER)
    assert old.exact == [] and all(h.key != key for h in old.duplicates)
    assert [h.key for h in new.exact] == [key]


def test_delete_removes_both_entries_and_deleting_again_succeeds(empty: Gallery, photos: list[Path]) -> None:
    empty.indexer.index("users/ann/a.jpg", photos[0].read_bytes(), OWNER)

    empty.indexer.delete("users/ann/a.jpg")
    empty.indexer.delete("users/ann/a.jpg")
    empty.indexer.delete("users/ann/never-indexed.jpg")

    assert empty.hashes.count() == empty.vectors.count() == 0


class FailingOnce:
    """A real hash index whose next upsert fails, like a store timing out mid-request."""

    def __init__(self, inner: HashIndex) -> None:
        self.inner = inner
        self.fail_next = True

    def upsert(self, records: Sequence[ImageRecord]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise StoreUnavailable("hash index timed out")
        self.inner.upsert(records)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_store_failing_halfway_fails_the_call_and_a_retry_converges(
    tmp_path: Path, extractor: SignatureExtractor, photos: list[Path]
) -> None:
    flaky = FailingOnce(SqliteHashIndex(tmp_path / "hashes.sqlite"))
    g = make_services(tmp_path, extractor, hashes=flaky)
    key, data = "users/ann/a.jpg", photos[0].read_bytes()

    with pytest.raises(StoreUnavailable):
        g.indexer.index(key, data, OWNER, skip_unchanged=True)
    retried = g.indexer.index(key, data, OWNER, skip_unchanged=True)

    assert retried.status == "indexed"  # the half-written vector did not count as "unchanged"
    assert g.hashes.count() == g.vectors.count() == 1
    assert [h.key for h in g.searcher.search_image(data, OWNER).exact] == [key]


def test_an_entry_in_only_one_store_is_reported_not_fatal(empty: Gallery, photos: list[Path]) -> None:
    data = photos[0].read_bytes()
    empty.indexer.index("users/ann/a.jpg", data, OWNER)
    orphan = VectorEntry(
        image_id(BUCKET, "users/ann/orphan.jpg"),
        OWNER,
        "users/ann/orphan.jpg",
        "0" * 64,
        "vgg16-gmp-fp32",
        empty.vectors.get([image_id(BUCKET, "users/ann/a.jpg")], OWNER)[image_id(BUCKET, "users/ann/a.jpg")].vector,
    )
    empty.vectors.upsert([orphan])

    result = empty.searcher.search_image(data, OWNER)

    orphan_hits = [h for h in result.duplicates + result.similar if h.key == "users/ann/orphan.jpg"]
    assert len(orphan_hits) == 1 and orphan_hits[0].record is None
    assert any("vector index but not the hash index" in w for w in result.warnings)
    assert np.isclose(orphan_hits[0].similarity or 0, 1.0, atol=1e-4)

"""`lookalike serve`, the local twin, as a user runs it: a real process on a loopback port."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests
from PIL import Image

from lookalike.devserver import generated_pictures
from lookalike.identity import content_sha256
from tests.functional.conftest import photo_bytes
from tests.twin import running_twin

FORM = "application/x-www-form-urlencoded"


@pytest.fixture(scope="module")
def samples(photos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("samples")
    for path in photos[:3]:
        (folder / f"{path.stem}.jpg").write_bytes(photo_bytes(path))
    return folder


@pytest.fixture(scope="module")
def twin(samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`lookalike serve` on a free port with its own data dir; yields its base URL."""
    data_dir = tmp_path_factory.mktemp("twin-data")
    with running_twin(data_dir, "--sample-gallery", str(samples), "--sample-size", "2") as (url, banner):
        assert "(owner: local)" in banner
        yield url


def upload(twin: str, filename: str, content_type: str = "image/jpeg") -> dict[str, Any]:
    reply = requests.post(f"{twin}/uploads", json={"content_type": content_type, "filename": filename}, timeout=30)
    assert reply.status_code == 200
    presigned: dict[str, Any] = reply.json()
    return presigned


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query)) | changes
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_the_sample_gallery_is_indexed_before_serving(twin: str, samples: Path) -> None:
    images = requests.get(f"{twin}/images", timeout=30).json()["images"]

    assert [image["key"] for image in images] == [
        f"users/local/samples/{path.name}" for path in sorted(samples.iterdir())[:2]
    ]
    assert all(image["indexed"] for image in images)


def test_an_image_put_through_its_presigned_url_is_searchable_when_the_put_returns(
    twin: str, photos: list[Path]
) -> None:
    data = photo_bytes(photos[10])
    presigned = upload(twin, "my holiday photo.jpg")
    assert presigned["method"] == "PUT" and presigned["key"].startswith("users/local/uploads/")

    put = requests.put(presigned["url"], data=data, headers=presigned["headers"], timeout=60)
    found = requests.post(f"{twin}/search", data=data, headers={"Content-Type": "image/jpeg"}, timeout=60)

    assert put.status_code == 200
    assert found.status_code == 200
    exact = found.json()["exact"]
    assert [hit["key"] for hit in exact] == [presigned["key"]]
    assert exact[0]["record"]["sha256"] == content_sha256(data)
    # curl --data-binary's default content type: the bytes still arrive whole
    as_form = requests.post(f"{twin}/search", data=data, timeout=60, headers={"Content-Type": FORM})
    assert [hit["key"] for hit in as_form.json()["exact"]] == [presigned["key"]]


def test_a_presigned_url_only_works_for_its_key_and_content_type(twin: str, photos: list[Path]) -> None:
    data = photo_bytes(photos[11])
    presigned = upload(twin, "mine.jpg")
    other = upload(twin, "other.jpg")
    signed = dict(parse_qsl(urlsplit(presigned["url"]).query))
    signature = signed["signature"]
    tampered = with_query(presigned["url"], signature=("0" if signature[0] != "0" else "1") + signature[1:])
    swapped = with_query(other["url"], signature=signature, expires=signed["expires"])  # mine, on another key

    for url, headers in (
        (tampered, presigned["headers"]),
        (swapped, presigned["headers"]),
        (presigned["url"], {"Content-Type": "image/png"}),
    ):
        refused = requests.put(url, data=data, headers=headers, timeout=30)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden"
    listed = [image["key"] for image in requests.get(f"{twin}/images", timeout=30).json()["images"]]
    assert presigned["key"] not in listed and other["key"] not in listed


def test_delete_removes_the_object_and_its_entries_through_the_event_path(twin: str, photos: list[Path]) -> None:
    data = photo_bytes(photos[12])
    presigned = upload(twin, "short lived.jpg")
    requests.put(presigned["url"], data=data, headers=presigned["headers"], timeout=60).raise_for_status()
    key = presigned["key"]
    assert requests.get(f"{twin}/images/{key}", timeout=30).status_code == 200

    deleted = requests.delete(f"{twin}/images/{key}", timeout=60)

    assert deleted.status_code == 202
    assert requests.get(f"{twin}/images/{key}", timeout=30).status_code == 404
    found = requests.post(f"{twin}/search", data=data, headers={"Content-Type": "image/jpeg"}, timeout=60).json()
    assert key not in [hit["key"] for hit in found["exact"] + found["duplicates"]]


def test_thumbnails_and_health_are_served(twin: str) -> None:
    key = requests.get(f"{twin}/images", timeout=30).json()["images"][0]["key"]

    thumbnail = requests.get(f"{twin}/thumbnails/{key}", params={"size": "128"}, timeout=30)

    assert thumbnail.status_code == 200 and thumbnail.headers["Content-Type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumbnail.content)) as image:
        assert max(image.size) == 128
    assert requests.get(f"{twin}/health", timeout=30).json()["status"] == "ok"


def test_generated_sample_pictures_are_varied_images_with_edited_copies() -> None:
    pictures = list(generated_pictures(12))

    assert len(pictures) == 12
    assert len({content_sha256(data) for _, data, _ in pictures}) == 12
    assert sum("edited-copy" in name for name, _, _ in pictures) == 2
    for _, data, content_type in pictures:
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG" and content_type == "image/jpeg" and min(image.size) >= 100

"""Identity and key layout: ids are stable and distinct, owners come from where objects live."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lookalike.errors import InvalidRequest
from lookalike.identity import content_sha256, image_id
from lookalike.keys import owner_from_key, owner_key, validate_owner

KEYS = ["users/ann/red flower.jpg", "users/ann/red+flower.jpg", "users/ann/l'été.jpg", "users/ann/日本.png"]


def test_ids_are_stable_across_processes() -> None:
    code = "from lookalike.identity import image_id; print(image_id('gallery', \"users/ann/l'été.jpg\"))"
    other_process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert other_process.stdout.strip() == image_id("gallery", "users/ann/l'été.jpg")


def test_keys_that_differ_only_in_encoding_get_different_ids() -> None:
    ids = {image_id("gallery", key) for key in KEYS}

    assert len(ids) == len(KEYS)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


@given(st.text(min_size=1), st.text(min_size=1), st.text(min_size=1), st.text(min_size=1))
def test_bucket_and_key_cannot_be_shifted_into_each_other(b1: str, k1: str, b2: str, k2: str) -> None:
    if (b1, k1) != (b2, k2) and "\x00" not in b1 + b2:
        assert image_id(b1, k1) != image_id(b2, k2)


def test_sha256_is_of_the_bytes() -> None:
    assert content_sha256(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize(
    ("key", "owner"),
    [
        ("users/ann/a.jpg", "ann"),
        ("users/ann/deep/er/a.jpg", "ann"),
        ('users/a\'b "c"/a.jpg', 'a\'b "c"'),
        ("users/ann/", None),
        ("users//a.jpg", None),
        ("users/ann", None),
        ("other/ann/a.jpg", None),
    ],
)
def test_owner_is_read_from_the_key_layout(key: str, owner: str | None) -> None:
    assert owner_from_key(key, "users/") == owner


def test_owner_key_round_trips_through_owner_from_key() -> None:
    key = owner_key("ann", "/holiday/beach.jpg", "users/")

    assert key == "users/ann/holiday/beach.jpg"
    assert owner_from_key(key, "users/") == "ann"


@pytest.mark.parametrize("owner", ["", "a/b", "x\x00y", "o" * 300])
def test_owners_that_cannot_be_one_path_segment_are_refused(owner: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        validate_owner(owner)

    assert error.value.parameter == "owner"

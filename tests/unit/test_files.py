"""write_atomically: the old content or the new, never half, and no leftovers."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookalike.files import write_atomically


def test_it_writes_the_chunks_in_order_creating_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.json"
    write_atomically(path, b"head\n", b"body")
    assert path.read_bytes() == b"head\nbody"
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]


def test_a_failed_write_leaves_the_old_content_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_atomically(path, b"old")

    class Unwritable:  # not bytes: the write fails after the temporary file was created
        pass

    with pytest.raises(TypeError):
        write_atomically(path, b"new, half", Unwritable())  # type: ignore[arg-type]

    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]

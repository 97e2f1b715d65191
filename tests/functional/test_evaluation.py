"""`lookalike eval` end to end on a tiny gallery: 12 photos indexed, 4 held out, 4 edits."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from lookalike import evaluation
from lookalike.bootstrap import build_services
from lookalike.edits import edited_upload
from lookalike.keys import owner_key
from lookalike.settings import THRESHOLDS_FILE, Settings
from lookalike.thresholds import Thresholds

pytestmark = pytest.mark.slow

EDITS = ["jpeg_q30", "letterbox_15", "text_watermark", "flip_h"]
TARGET_FMR = 0.05
SEED = 3


@dataclass(frozen=True)
class EvalRun:
    exit_code: int
    report: dict[str, Any]
    folder: Path
    out: Path
    gallery_dir: Path
    user_dir: Path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, photos: list[Path]) -> EvalRun:
    root = tmp_path_factory.mktemp("eval")
    folder = root / "photos"
    folder.mkdir()
    for photo in photos[::31][:16]:  # 16 photos of 16 different classes
        (folder / photo.name).symlink_to(photo)
    out, gallery_dir, user_dir = root / "out", root / "gallery", root / "user"
    argv = [str(folder), "--held-out-count", "4", "--edits", ",".join(EDITS), "--target-fmr", str(TARGET_FMR)]
    argv += ["--out", str(out), "--gallery-dir", str(gallery_dir), "--seed", str(SEED), "--write-config"]

    exit_code = evaluation.main(argv, settings=Settings(data_dir=user_dir))

    report = json.loads((out / "eval.json").read_text())
    return EvalRun(exit_code, report, folder, out, gallery_dir, user_dir)


def test_the_report_has_every_edit_tier_and_depth(run: EvalRun) -> None:
    report = run.report
    assert run.exit_code == 0
    assert report["config"]["gallery_photos"] == 12
    assert report["config"]["held_out_photos"] == 4
    assert report["config"]["held_out_queries"] == 4 * (len(EDITS) + 1)  # unedited and each edit
    assert list(report["edits"]) == EDITS
    for row in report["edits"].values():
        assert row["queries"] == 12
        for tier in ("hash", "vector", "fused"):
            at1, at10 = row["recall"][tier]["at1"], row["recall"][tier]["at10"]
            assert 0.0 <= at1 <= at10 <= 1.0
    assert set(report["calibration"]) >= {"fused", "hash_only", "vector_only", "current_thresholds", "method"}
    assert set(report["curves"]) == {"hash", "vector", "fused"}
    assert sum(report["held_out"]["nearest_wrong_distance_histogram"].values()) == 4 * (len(EDITS) + 1)


def test_a_recompressed_copy_finds_its_original_first(run: EvalRun) -> None:
    recall = run.report["edits"]["jpeg_q30"]["recall"]
    assert recall["fused"]["at1"] >= 11 / 12
    assert recall["hash"]["at1"] >= 11 / 12
    assert recall["vector"]["at1"] >= 11 / 12


def test_a_flipped_copy_is_lost_by_the_hash_but_found_by_the_vector(run: EvalRun) -> None:
    recall = run.report["edits"]["flip_h"]["recall"]
    assert recall["hash"]["at10"] <= 1 / 12  # a mirrored pHash is about 32 bits away
    assert recall["vector"]["at10"] >= 10 / 12


def test_calibrated_thresholds_keep_false_matches_under_the_target_when_searched_again(run: EvalRun) -> None:
    fused = run.report["calibration"]["fused"]
    assert run.report["calibration"]["false_matches"] == "all"
    assert fused["false_match_rate"] <= TARGET_FMR
    thresholds = Thresholds(fused["duplicate_distance"], fused["duplicate_similarity"], 0.0)

    # Search again, through a fresh SearchService on the gallery the run kept, with the
    # calibrated thresholds: a held-out photo's duplicate is a false match, and so is an
    # edited copy's duplicate that is not its original.
    services = build_services(evaluation.embedded_settings(Settings(data_dir=run.user_dir), run.gallery_dir))
    gallery, held_out = evaluation.split_held_out(evaluation.photo_files(run.folder), 4)
    prefix = services.settings.owner_prefix
    held_out_false = edited_false = 0
    for path, name in gallery + held_out:
        image = evaluation.load_photo(path)
        uploads = [edited_upload(image, e, seed=SEED, photo_name=name) for e in EDITS]
        if (path, name) in held_out:
            uploads.append(path.read_bytes())
        original = owner_key(evaluation.EVAL_OWNER, name, prefix)
        for data in uploads:
            result = services.searcher.search_image(data, evaluation.EVAL_OWNER, thresholds=thresholds)
            strangers = [h for h in (*result.exact, *result.duplicates) if h.key != original]
            if (path, name) in held_out:
                held_out_false += bool(strangers)
            else:
                edited_false += bool(strangers)
    services.close()

    held_out_searches, edited_searches = 4 * (len(EDITS) + 1), 12 * len(EDITS)
    assert held_out_false / held_out_searches == pytest.approx(fused["held_out_false_match_rate"])
    assert edited_false / edited_searches == pytest.approx(fused["wrong_duplicate_rate"])
    measured = (held_out_false + edited_false) / (held_out_searches + edited_searches)
    assert measured == pytest.approx(fused["false_match_rate"])
    assert measured <= TARGET_FMR


def test_write_config_saves_thresholds_that_settings_then_load(run: EvalRun) -> None:
    fused = run.report["calibration"]["fused"]
    assert (run.user_dir / THRESHOLDS_FILE).is_file()

    loaded = Settings.from_env({"LOOKALIKE_DATA_DIR": str(run.user_dir)}).thresholds

    assert loaded.duplicate_distance == fused["duplicate_distance"]
    assert loaded.duplicate_similarity == pytest.approx(fused["duplicate_similarity"])
    assert loaded.min_similarity <= loaded.duplicate_similarity


@pytest.mark.parametrize("name", ["recall_by_edit.png", "tradeoff.png"])
def test_the_plots_are_png_images(run: EvalRun, name: str) -> None:
    path = run.out / name
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as plot:
        assert plot.format == "PNG"
        assert plot.width > 400 and plot.height > 300

"""Settings: the environment is read once, defaults need nothing, bad values name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookalike.errors import ConfigurationError, InvalidRequest
from lookalike.settings import THRESHOLDS_FILE, Settings, load_thresholds, save_thresholds
from lookalike.thresholds import Thresholds


def test_no_environment_means_embedded_stores_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings.from_env({"LOOKALIKE_DATA_DIR": str(tmp_path)})

    assert settings.embedded
    assert settings.local_objects
    assert settings.milvus_lite_path == tmp_path / "vectors.db"
    assert settings.sqlite_path == tmp_path / "hashes.sqlite"
    assert settings.thresholds == Thresholds()


def test_production_endpoints_are_read_from_the_environment(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "LOOKALIKE_DATA_DIR": str(tmp_path),
            "LOOKALIKE_BUCKET": "gallery-uploads",
            "MILVUS_URI": "https://in03.example.zillizcloud.com",
            "MILVUS_TOKEN_SECRET_ARN": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:zilliz",
            "OPENSEARCH_URL": "https://search.example.com",
            "OPENSEARCH_AUTH": "aoss",
            "AWS_REGION": "eu-west-1",
            "LOOKALIKE_MAX_OBJECT_BYTES": "1000",
        }
    )

    assert not settings.embedded
    assert not settings.local_objects
    assert settings.opensearch_auth == "aoss"
    assert settings.max_object_bytes == 1000
    assert settings.milvus_token is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OPENSEARCH_AUTH", "basic"),
        ("LOOKALIKE_MAX_OBJECT_BYTES", "-5"),
        ("LOOKALIKE_MODEL_THREADS", "two"),
        ("LOOKALIKE_OWNER_PREFIX", "users"),
        ("LOOKALIKE_DUPLICATE_DISTANCE", "99"),
        ("LOOKALIKE_MIN_SIMILARITY", "1.5"),
    ],
)
def test_a_bad_value_fails_at_start_naming_the_setting(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        Settings.from_env({variable: value})

    assert variable in str(error.value) or "threshold" in str(error.value)


def test_sigv4_needs_a_region() -> None:
    with pytest.raises(ConfigurationError, match="AWS_REGION"):
        Settings.from_env({"OPENSEARCH_URL": "https://search.example.com", "OPENSEARCH_AUTH": "es"})


def test_the_token_is_never_part_of_the_settings_repr() -> None:
    settings = Settings.from_env({"MILVUS_URI": "https://x.example.com", "MILVUS_TOKEN": "s3cr3t-token"})

    assert "s3cr3t-token" not in repr(settings)


def test_calibrated_thresholds_are_loaded_from_the_data_dir_and_env_still_wins(tmp_path: Path) -> None:
    save_thresholds(tmp_path / THRESHOLDS_FILE, Thresholds(6, 0.9, 0.4), note="test run")

    from_file = Settings.from_env({"LOOKALIKE_DATA_DIR": str(tmp_path)})
    overridden = Settings.from_env({"LOOKALIKE_DATA_DIR": str(tmp_path), "LOOKALIKE_DUPLICATE_DISTANCE": "3"})

    assert from_file.thresholds == Thresholds(6, 0.9, 0.4)
    assert overridden.thresholds == Thresholds(3, 0.9, 0.4)


def test_a_corrupt_thresholds_file_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / THRESHOLDS_FILE).write_text("{not json")

    with pytest.raises(ConfigurationError, match=THRESHOLDS_FILE):
        load_thresholds(tmp_path / THRESHOLDS_FILE)


@pytest.mark.parametrize(
    ("thresholds", "parameter"),
    [
        (Thresholds(duplicate_distance=-1), "duplicate_distance"),
        (Thresholds(duplicate_distance=64), "duplicate_distance"),
        (Thresholds(duplicate_similarity=1.2), "duplicate_similarity"),
        (Thresholds(min_similarity=-0.1), "min_similarity"),
        (Thresholds(duplicate_similarity=0.5, min_similarity=0.6), "min_similarity"),
    ],
)
def test_out_of_range_thresholds_name_the_parameter(thresholds: Thresholds, parameter: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        thresholds.validate()

    assert error.value.parameter == parameter

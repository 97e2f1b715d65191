"""Typed settings: the only place in lookalike that reads the environment.

Read once at start (cold start in Lambda, process start for the CLI and the local server);
a missing or malformed setting raises ConfigurationError naming the variable. With no
variables at all, everything runs on the embedded stores in a local data directory.

| variable | meaning | default |
| --- | --- | --- |
| LOOKALIKE_DATA_DIR | embedded stores and the local object store | ~/.local/share/lookalike |
| LOOKALIKE_BUCKET | the upload bucket on S3; "local" is the folder in the data dir | local |
| LOOKALIKE_OWNER_PREFIX | keys are <prefix><owner>/...; the owner is read from the key | users/ |
| LOOKALIKE_MODEL_PATH | the live feature model (.onnx) | /opt/model/... in Lambda, else the repo's INT8 build |
| LOOKALIKE_NEXT_MODEL_PATH | a second model the indexer also writes vectors of, into its own collection | none |
| LOOKALIKE_MODEL_THREADS | ONNX Runtime intra-op threads | all cores |
| MILVUS_URI | Milvus server / Zilliz Cloud endpoint | Milvus Lite file in the data dir |
| MILVUS_TOKEN | token for MILVUS_URI (local use only) | none |
| MILVUS_TOKEN_SECRET_ARN | Secrets Manager secret holding the token (Lambda) | none |
| LOOKALIKE_MILVUS_COLLECTION | the live model's collection | lookalike_<model name>, e.g. lookalike_vgg16_gmp_int8 |
| OPENSEARCH_URL | OpenSearch endpoint | SQLite file in the data dir |
| OPENSEARCH_AUTH | none, es (managed domain, SigV4) or aoss (Serverless, SigV4) | none |
| LOOKALIKE_OPENSEARCH_INDEX | index name | lookalike-images |
| LOOKALIKE_MAX_OBJECT_BYTES | larger objects are rejected before download | 52428800 |
| LOOKALIKE_IDEMPOTENCY_TABLE | DynamoDB table for the indexer's idempotency | none (no idempotency store) |
| LOOKALIKE_UPLOAD_URL_EXPIRES | lifetime of presigned upload URLs, seconds | 300 |
| LOOKALIKE_DUPLICATE_DISTANCE | default pHash distance of the duplicate tier | thresholds.json, else measured |
| LOOKALIKE_DUPLICATE_SIMILARITY | default cosine for the duplicate tier | thresholds.json, else measured |
| LOOKALIKE_MIN_SIMILARITY | default cosine for the similar tier | thresholds.json, else measured |
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal, TypeVar

from lookalike.errors import ConfigurationError
from lookalike.files import write_atomically
from lookalike.thresholds import Thresholds

OpenSearchAuth = Literal["none", "es", "aoss"]
T = TypeVar("T")

LOCAL_BUCKET = "local"
THRESHOLDS_FILE = "thresholds.json"
LAMBDA_MODEL_PATH = Path("/opt/model/feature-model.onnx")
# INT8 by default, as in the Lambda model layer: 3.5 times FP32's speed, and `lookalike eval`
# found its true-match rate within 1 point of FP32's on every edit (docs/quality.md).
REPO_MODEL_PATH = Path(__file__).resolve().parents[2] / "model" / "build" / "vgg16-gmp-int8.onnx"


def _default_data_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "lookalike"


def _default_model_path() -> Path:
    return LAMBDA_MODEL_PATH if LAMBDA_MODEL_PATH.exists() else REPO_MODEL_PATH


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=lambda: _default_data_dir(os.environ))
    bucket: str = LOCAL_BUCKET
    owner_prefix: str = "users/"
    model_path: Path = field(default_factory=_default_model_path)
    model_threads: int | None = None
    # A model change in progress (docs/operations.md): the indexer writes this model's vectors
    # too, into the collection named after it, while searches keep using model_path's.
    next_model_path: Path | None = None
    milvus_uri: str | None = None
    milvus_token: str | None = field(default=None, repr=False)
    milvus_token_secret_arn: str | None = None
    milvus_collection: str | None = None  # None: named after the live model (milvus_collection_for)
    opensearch_url: str | None = None
    opensearch_auth: OpenSearchAuth = "none"
    opensearch_index: str = "lookalike-images"
    aws_region: str | None = None
    max_object_bytes: int = 50 * 1024 * 1024
    idempotency_table: str | None = None
    upload_url_expires: int = 300
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def local_objects(self) -> bool:
        """True when the "bucket" is the local object store in the data directory."""
        return self.bucket == LOCAL_BUCKET

    @property
    def embedded(self) -> bool:
        """True when both indexes are the embedded ones (Milvus Lite and SQLite)."""
        return self.milvus_uri is None and self.opensearch_url is None

    @property
    def milvus_lite_path(self) -> Path:
        return self.data_dir / "vectors.db"

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "hashes.sqlite"

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"

    def with_data_dir(self, data_dir: Path) -> Settings:
        return replace(self, data_dir=data_dir)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from environment variables (``os.environ`` unless given)."""
        env = os.environ if env is None else env
        defaults = cls(data_dir=_default_data_dir(env))

        def get(name: str, parse: Callable[[str], T], default: T) -> T:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return parse(raw)
            except (ValueError, ConfigurationError) as exc:
                raise ConfigurationError(f"{name}={raw!r} is not valid: {exc}") from exc

        auth = get("OPENSEARCH_AUTH", _parse_auth, defaults.opensearch_auth)
        data_dir = get("LOOKALIKE_DATA_DIR", lambda v: Path(v).expanduser(), defaults.data_dir)
        calibrated = load_thresholds(data_dir / THRESHOLDS_FILE) or defaults.thresholds
        settings = cls(
            data_dir=data_dir,
            bucket=get("LOOKALIKE_BUCKET", str, defaults.bucket),
            owner_prefix=get("LOOKALIKE_OWNER_PREFIX", _parse_prefix, defaults.owner_prefix),
            model_path=get("LOOKALIKE_MODEL_PATH", lambda v: Path(v).expanduser(), defaults.model_path),
            model_threads=get("LOOKALIKE_MODEL_THREADS", _positive_int, None),
            next_model_path=get("LOOKALIKE_NEXT_MODEL_PATH", lambda v: Path(v).expanduser(), None),
            milvus_uri=get("MILVUS_URI", str, None),
            milvus_token=get("MILVUS_TOKEN", str, None),
            milvus_token_secret_arn=get("MILVUS_TOKEN_SECRET_ARN", str, None),
            milvus_collection=get("LOOKALIKE_MILVUS_COLLECTION", _parse_collection, None),
            opensearch_url=get("OPENSEARCH_URL", str, None),
            opensearch_auth=auth,
            opensearch_index=get("LOOKALIKE_OPENSEARCH_INDEX", str, defaults.opensearch_index),
            aws_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            max_object_bytes=get("LOOKALIKE_MAX_OBJECT_BYTES", _positive_int, defaults.max_object_bytes),
            idempotency_table=get("LOOKALIKE_IDEMPOTENCY_TABLE", str, None),
            upload_url_expires=get("LOOKALIKE_UPLOAD_URL_EXPIRES", _positive_int, defaults.upload_url_expires),
            thresholds=Thresholds(
                duplicate_distance=get("LOOKALIKE_DUPLICATE_DISTANCE", int, calibrated.duplicate_distance),
                duplicate_similarity=get("LOOKALIKE_DUPLICATE_SIMILARITY", float, calibrated.duplicate_similarity),
                min_similarity=get("LOOKALIKE_MIN_SIMILARITY", float, calibrated.min_similarity),
            ),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Fail at start, naming the setting, rather than at the first request."""
        try:
            self.thresholds.validate()
        except Exception as exc:
            raise ConfigurationError(f"default thresholds: {exc}") from exc
        if self.opensearch_auth != "none" and not self.aws_region:
            raise ConfigurationError("OPENSEARCH_AUTH=es/aoss signs requests with SigV4 and needs AWS_REGION")
        if self.opensearch_url and not self.opensearch_url.startswith(("http://", "https://")):
            raise ConfigurationError(f"OPENSEARCH_URL must start with http:// or https://: {self.opensearch_url}")
        if self.milvus_token and self.milvus_token_secret_arn:
            raise ConfigurationError("set MILVUS_TOKEN or MILVUS_TOKEN_SECRET_ARN, not both")
        if self.next_model_path is not None and self.next_model_path == self.model_path:
            raise ConfigurationError("LOOKALIKE_NEXT_MODEL_PATH is the live model (LOOKALIKE_MODEL_PATH): unset it")

    def milvus_collection_for(self, model_name: str) -> str:
        """The live model's collection: LOOKALIKE_MILVUS_COLLECTION, else named after the model."""
        return self.milvus_collection or collection_for_model(model_name)


def collection_for_model(model_name: str) -> str:
    """The Milvus collection of a model's vectors: one per model, so that a model change never
    mixes vectors of two models in one collection.

    >>> collection_for_model("vgg16-gmp-fp32")
    'lookalike_vgg16_gmp_fp32'
    """
    return "lookalike_" + re.sub(r"[^0-9A-Za-z_]", "_", model_name)


def load_thresholds(path: Path) -> Thresholds | None:
    """Thresholds calibrated by ``lookalike eval --write-config`` (None when there are none)."""
    if not path.exists():
        return None
    try:
        values = json.loads(path.read_text())
        return Thresholds(
            duplicate_distance=int(values["duplicate_distance"]),
            duplicate_similarity=float(values["duplicate_similarity"]),
            min_similarity=float(values["min_similarity"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"{path} is not a valid thresholds file: {exc}") from exc


def save_thresholds(path: Path, thresholds: Thresholds, *, note: str = "") -> None:
    """Write calibrated thresholds where ``Settings.from_env`` finds them (env variables still win)."""
    thresholds.validate()
    write_atomically(path, (json.dumps({**asdict(thresholds), "note": note}, indent=2) + "\n").encode())


def _parse_auth(value: str) -> OpenSearchAuth:
    if value not in ("none", "es", "aoss"):
        raise ValueError("expected none, es or aoss")
    return value  # type: ignore[return-value]


def _parse_prefix(value: str) -> str:
    if not value.endswith("/"):
        raise ValueError("the owner prefix must end with '/'")
    return value


def _parse_collection(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", value):
        raise ValueError("a Milvus collection name is letters, digits and underscores, not starting with a digit")
    return value


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a positive integer")
    return number

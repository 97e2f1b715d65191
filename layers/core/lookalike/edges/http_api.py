"""The HTTP API: API Gateway HTTP API (payload v2) requests → the search service.

The same resolver serves the Lambda function (``functions/search_api``) and the local twin
(``lookalike serve``); they differ only in the :class:`ApiBackend` they pass to :func:`handle`.

The owner of every data request is the verified JWT's ``sub`` claim, put in the event by the
API Gateway JWT authorizer (by the local twin's dev mode locally): no request field can set
it, and another owner's key is answered exactly like a missing one. The page (``GET /``,
``GET /static/...``), ``GET /health`` and ``GET /openapi.json`` are public.

Domain errors become HTTP statuses in one place, :func:`error_response`.

Keys travel in the path (``/images/users/ann/red%20flower.jpg``); API Gateway HTTP APIs decode
the path before the function sees it and cut it at a decoded ``?``, so a key containing ``?``
or ``#`` can be searched by key (JSON body) but not addressed in a path.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import json
import logging
import mimetypes
import os
import re
import secrets
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol
from urllib.parse import quote

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from aws_lambda_powertools.metrics import MetricUnit
from PIL import Image

import lookalike
from lookalike.errors import (
    ConfigurationError,
    ImageRejected,
    InvalidRequest,
    LookalikeError,
    NotFound,
    StoreUnavailable,
)
from lookalike.identity import image_id
from lookalike.imaging import decode
from lookalike.keys import owner_from_key, owner_key, validate_owner
from lookalike.services.search import MAX_PAGE_SIZE
from lookalike.thresholds import Thresholds

if TYPE_CHECKING:
    from aws_lambda_powertools import Metrics
    from aws_lambda_powertools.utilities.typing import LambdaContext

    from lookalike.bootstrap import Services
    from lookalike.ports import ImageRecord, StoredObject

logger = logging.getLogger(__name__)

JSON = "application/json"
#: Lambda refuses a synchronous invocation whose request payload exceeds 6 MB (the base64
#: body included); bigger images go to the bucket through POST /uploads.
SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024
DEFAULT_SEARCH_PAGE_SIZE = 20
DEFAULT_LIST_PAGE_SIZE = 100
MAX_LIST_PAGE_SIZE = 1000
THUMBNAIL_SIZES = (64, 128, 256, 512)
DEFAULT_THUMBNAIL_SIZE = 256
#: The formats lookalike.imaging decodes, as uploads may declare them.
UPLOAD_CONTENT_TYPES = frozenset(
    f"image/{name}" for name in ("jpeg", "png", "gif", "webp", "bmp", "tiff", "avif", "heic", "heif")
)
WEB_ROOT = Path(__file__).resolve().parents[1] / "web"

_REJECTION_STATUS = {"too_large": 413, "too_many_pixels": 413, "not_an_image": 415, "unsupported_format": 415}
_ERROR_MEANINGS = {
    400: "An invalid parameter (`parameter` names it) or a rejected image (`reason`: empty, truncated, ...)",
    401: "No verified JWT with a `sub` claim",
    404: "No such image for this owner (another owner's image is answered the same way)",
    413: "The image or the request is too large (larger images: POST /uploads, then search by key)",
    415: "The body is not an image, or not in a format lookalike decodes",
    503: "A store is unavailable; retry later",
}
_JWT: list[dict[str, list[str]]] = [{"jwt": []}]  # the OpenAPI security requirement of every data route


def _errors(*statuses: int) -> dict[int, OpenAPIResponse]:
    """The error answers a route documents (all shaped like :func:`error_response` writes them)."""
    return {status: {"description": _ERROR_MEANINGS[status]} for status in statuses}


class Unauthenticated(LookalikeError):
    """The request carries no verified JWT claims (the authorizer did not run or let it through)."""

    code = "unauthorized"


class UploadSigner(Protocol):
    def __call__(self, key: str, content_type: str, expires_in: int) -> dict[str, Any]:
        """How to upload ``key``: ``{"method": "POST", "url", "fields"}`` (S3: a form upload) or
        ``{"method": "PUT", "url", "headers"}`` (the local twin)."""


@dataclass
class ApiBackend:
    """What the routes need besides the services: the only difference between Lambda and the twin."""

    services: Services
    sign_upload: UploadSigner
    thumbnails: ThumbnailCache
    #: After DELETE removed an object: in the cloud S3 sends ObjectRemoved to the indexer by
    #: itself; the local twin delivers that event through the same path.
    after_delete: Callable[[str], None] = lambda key: None


def handle(
    event: Mapping[str, Any],
    context: LambdaContext | None,
    backend: ApiBackend | Callable[[], ApiBackend],
    *,
    metrics: Metrics | None = None,
) -> dict[str, Any]:
    """Answer one API Gateway HTTP API (v2) event; ``metrics`` counts what was asked (Lambda only).

    ``backend`` may be a factory: it is then called by the routes that need it, so the page
    and the OpenAPI document never load the model, and a store down at cold start is a 503.
    """
    app.append_context(backend=backend, metrics=metrics)
    response: dict[str, Any] = app.resolve(dict(event), context)  # type: ignore[arg-type]  # the twin has none
    # Every answer is counted by its class, so each invocation publishes a metric and client
    # errors can be told from server errors on a dashboard.
    if metrics is not None:
        status = int(response.get("statusCode", 500))
        outcome = "ServerErrors" if status >= 500 else "ClientErrors" if status >= 400 else "Answers"
        metrics.add_metric(name=outcome, unit=MetricUnit.Count, value=1)
    return response


@functools.cache
def cloud_backend() -> ApiBackend:
    """The Lambda function's backend, built once per container from the environment."""
    from lookalike.bootstrap import services_from_env

    # /tmp is the only writable place in Lambda; the cache lives as long as the container.
    return s3_backend(services_from_env(), Path(tempfile.gettempdir()) / "lookalike-thumbnails")


def s3_backend(services: Services, thumbnail_dir: Path) -> ApiBackend:
    """A backend on an S3 bucket: uploads are presigned POSTs, S3 itself notifies deletions."""
    from lookalike.adapters.s3_objects import S3ObjectStore

    objects = services.objects
    if not isinstance(objects, S3ObjectStore):
        raise ConfigurationError("the search API function needs LOOKALIKE_BUCKET (an S3 bucket) for its uploads")

    def sign_upload(key: str, content_type: str, expires_in: int) -> dict[str, Any]:
        # A presigned POST: S3 itself enforces the size limit and the content type.
        return objects.presigned_put(
            key, expires_in=expires_in, content_type=content_type, max_bytes=services.settings.max_object_bytes
        )

    return ApiBackend(services, sign_upload=sign_upload, thumbnails=ThumbnailCache(thumbnail_dir))


class _GreedyPathResolver(APIGatewayHttpResolver):
    """Every path parameter of this API is an object key or a file path, and so may contain
    '/': each ``<name>`` matches the rest of the path, like API Gateway's ``{name+}``.

    Powertools' own parameters stop at '/'. This overrides the (private) rule compiler the
    way Powertools' REST resolver does for trailing slashes; the OpenAPI paths stay
    ``/images/{key}``. Recheck on a Powertools major upgrade (tests cover slashes in keys).
    """

    @staticmethod
    def _compile_regex(rule: str, base_regex: str = "^{}$") -> re.Pattern[str]:
        return re.compile(base_regex.format(re.sub(r"<(\w+)>", r"(?P<\1>.+)", rule)))


app = _GreedyPathResolver(enable_validation=True)
app.configure_openapi(
    title="lookalike",
    version=lookalike.__version__,
    summary="Search by image: the original, its duplicates and the lookalikes of a picture.",
    description=(
        "Every data route acts for the owner named by the verified JWT's `sub` claim and sees only "
        "that owner's images (keys under `users/<sub>/`); another owner's key is answered like a "
        'missing one. Errors are `{"error": {"code", "message", ...}}` with `parameter` for '
        "invalid requests and `reason` for rejected images."
    ),
    security_schemes={"jwt": HTTPBearer(bearerFormat="JWT")},
)


# --- Search --------------------------------------------------------------------------------


@app.post(
    "/search",
    summary="Search by image or by key",
    description=(
        "The body is either the image itself (raw bytes, any content type but JSON, base64 when the "
        f"event says so; at most Lambda's {SYNC_PAYLOAD_LIMIT // 2**20} MB synchronous payload, larger "
        "images go through POST /uploads and are searched by key) or JSON "
        '`{"key": ..., "page": ..., "page_size": ..., "duplicate_distance": ..., '
        '"duplicate_similarity": ..., "min_similarity": ...}` to search with an image already stored. '
        "The answer has three tiers: `exact` (same bytes), `duplicates` (the same picture edited) "
        "and `similar` (paginated); every hit carries a `thumbnail_url`."
    ),
    tags=["search"],
    security=_JWT,
    responses=_errors(400, 401, 404, 413, 415, 503),
)
def search(
    page: Annotated[int | None, Query(description="page of the `similar` tier, from 1")] = None,
    page_size: Annotated[int | None, Query(description=f"similar hits per page, 1 to {MAX_PAGE_SIZE}")] = None,
    duplicate_distance: Annotated[int | None, Query(description="max pHash distance of a duplicate")] = None,
    duplicate_similarity: Annotated[float | None, Query(description="min cosine of a duplicate")] = None,
    min_similarity: Annotated[float | None, Query(description="min cosine of a similar image")] = None,
) -> Response[dict[str, Any]]:
    owner = _owner()
    backend = _backend()
    options: dict[str, Any] = {
        "page": page,
        "page_size": page_size,
        "duplicate_distance": duplicate_distance,
        "duplicate_similarity": duplicate_similarity,
        "min_similarity": min_similarity,
    }
    searcher = backend.services.searcher
    if _is_json():
        body = _json_body()
        options |= {name: _number(name, body[name]) for name in options if body.get(name) is not None}
        key = body.get("key")
        if not isinstance(key, str) or not key:
            raise InvalidRequest("key", "a JSON search body needs the key of a stored image")
        _count("SearchesByKey")
        result = searcher.search_key(key, owner, **_search_arguments(options, searcher.defaults))
    else:
        _count("SearchesByImage")
        result = searcher.search_image(_body_bytes(), owner, **_search_arguments(options, searcher.defaults))
    answer = result.to_dict()
    for tier in ("exact", "duplicates", "similar"):
        for hit in answer[tier]:
            hit["thumbnail_url"] = _thumbnail_url(hit["key"])
    return _json(200, answer)


def _search_arguments(options: Mapping[str, int | float | None], defaults: Thresholds) -> dict[str, Any]:
    def pick(name: str, default: int | float) -> Any:
        value = options.get(name)
        return default if value is None else value

    return {
        "page": pick("page", 1),
        "page_size": pick("page_size", DEFAULT_SEARCH_PAGE_SIZE),
        "thresholds": Thresholds(
            duplicate_distance=pick("duplicate_distance", defaults.duplicate_distance),
            duplicate_similarity=pick("duplicate_similarity", defaults.duplicate_similarity),
            min_similarity=pick("min_similarity", defaults.min_similarity),
        ),
    }


_INTEGER_OPTIONS = frozenset({"page", "page_size", "duplicate_distance"})


def _number(name: str, value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(name, f"must be a number, got {json.dumps(value)}")
    if name in _INTEGER_OPTIONS:
        if isinstance(value, float) and not value.is_integer():
            raise InvalidRequest(name, f"must be an integer, got {value}")
        return int(value)
    return float(value)


# --- Images --------------------------------------------------------------------------------


@app.get(
    "/images",
    summary="List the caller's images",
    description=(
        "From the bucket listing under the caller's prefix, joined with the index. `order=key` pages "
        "with `continuation_token` (or `page`); `order=newest` (most recently indexed first, images "
        "still being indexed before them) reads the whole listing and suits galleries of thousands."
    ),
    tags=["images"],
    security=_JWT,
    responses=_errors(400, 401, 503),
)
def list_images(
    order: Annotated[Literal["key", "newest"], Query(description="key order or newest first")] = "key",
    page: Annotated[int | None, Query(description="page number, from 1")] = None,
    page_size: Annotated[int, Query(description=f"1 to {MAX_LIST_PAGE_SIZE}")] = DEFAULT_LIST_PAGE_SIZE,
    continuation_token: Annotated[str | None, Query(description="`next_token` of the previous page")] = None,
) -> Response[dict[str, Any]]:
    owner = _owner()
    services = _backend().services
    if not 1 <= page_size <= MAX_LIST_PAGE_SIZE:
        raise InvalidRequest("page_size", f"must be between 1 and {MAX_LIST_PAGE_SIZE}, got {page_size}")
    if page is not None and page < 1:
        raise InvalidRequest("page", f"must be 1 or more, got {page}")
    if page is not None and continuation_token is not None:
        raise InvalidRequest("continuation_token", "use either page or continuation_token")
    position = _Position.decode(continuation_token, order) if continuation_token else _Position(order)
    if page is not None:
        position = replace(position, offset=(page - 1) * page_size)

    listing = services.objects.list(f"{services.settings.owner_prefix}{owner}/")
    if order == "key":
        window = _key_window(listing, position, page_size + 1)
        records = _records(services, owner, [o.key for o in window])
        items = [(o, records.get(image_id(services.objects.bucket, o.key))) for o in window]
    else:
        objects = list(listing)
        records = _records(services, owner, [o.key for o in objects])
        ranked = sorted(
            ((o, records.get(image_id(services.objects.bucket, o.key))) for o in objects),
            key=lambda item: (-(item[1].indexed_at if item[1] else float("inf")), item[0].key),
        )
        items = ranked[position.offset : position.offset + page_size + 1]

    has_more = len(items) > page_size
    items = items[:page_size]
    next_token = None
    if has_more:
        following = (
            _Position("key", after=items[-1][0].key)
            if order == "key"
            else _Position("newest", offset=position.offset + page_size)
        )
        next_token = following.encode()
    return _json(
        200,
        {
            "images": [_listed(stored, record) for stored, record in items],
            "order": order,
            "page_size": page_size,
            "has_more": has_more,
            "next_token": next_token,
        },
    )


@dataclass(frozen=True)
class _Position:
    """Where a listing page starts; travels as an opaque continuation token."""

    order: str
    after: str | None = None  # key order: the last key of the previous page
    offset: int = 0

    def encode(self) -> str:
        payload = json.dumps({"o": self.order, "a": self.after, "n": self.offset}, ensure_ascii=False)
        return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, order: str) -> _Position:
        try:
            payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            position = cls(str(payload["o"]), payload["a"], int(payload["n"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidRequest("continuation_token", "is not a token this API issued") from exc
        if position.order != order:
            raise InvalidRequest("continuation_token", f"was issued for order={position.order}")
        return position


def _key_window(listing: Iterator[StoredObject], position: _Position, count: int) -> list[StoredObject]:
    window: list[StoredObject] = []
    skipped = 0
    for stored in listing:
        if position.after is not None and stored.key <= position.after:
            continue
        if skipped < position.offset:
            skipped += 1
            continue
        window.append(stored)
        if len(window) == count:
            break
    return window


def _records(services: Services, owner: str, keys: list[str]) -> dict[str, ImageRecord]:
    records: dict[str, ImageRecord] = {}
    ids = [image_id(services.objects.bucket, key) for key in keys]
    for start in range(0, len(ids), 1000):
        records |= services.hashes.get(ids[start : start + 1000], owner)
    return records


def _listed(stored: StoredObject, record: ImageRecord | None) -> dict[str, Any]:
    return {
        "key": stored.key,
        "size": stored.size,
        "etag": stored.etag,
        "indexed": record is not None,
        "indexed_at": record.indexed_at if record else None,
        "width": record.width if record else None,
        "height": record.height if record else None,
        "thumbnail_url": _thumbnail_url(stored.key),
    }


@app.get(
    "/images/<key>",
    summary="What is indexed for one image",
    description="The image's record (hashes, size, trim, model); 404 for a missing key and another owner's alike.",
    tags=["images"],
    security=_JWT,
    responses=_errors(401, 404, 503),
)
def get_image(key: str) -> Response[dict[str, Any]]:
    record = _backend().services.searcher.record(key, _owner())
    return _json(200, asdict(record) | {"thumbnail_url": _thumbnail_url(key)})


@app.delete(
    "/images/<key>",
    summary="Delete an image",
    description=(
        "Deletes the object from the bucket and answers 202: the indexes follow through the upload "
        "event path (S3's ObjectRemoved notification), usually within seconds."
    ),
    tags=["images"],
    security=_JWT,
    responses=_errors(401, 404, 503),
)
def delete_image(key: str) -> Response[dict[str, Any]]:
    owner = _owner()
    backend = _backend()
    if owner_from_key(key, backend.services.settings.owner_prefix) != owner:
        raise NotFound(f"no image {key!r}")
    backend.services.objects.delete(key)
    backend.after_delete(key)
    _count("ImagesDeleted")
    return _json(202, {"key": key, "status": "deleting"})


# --- Uploads -------------------------------------------------------------------------------


@app.post(
    "/uploads",
    summary="Get a presigned upload for one new image",
    description=(
        'Body `{"content_type": "image/jpeg", "filename": "x.jpg"}`. The answer names ONE key under '
        "the caller's prefix and how to upload to it before `expires_in` seconds pass; once uploaded "
        "the image is indexed from the bucket's event and can be searched by key."
    ),
    tags=["uploads"],
    security=_JWT,
    responses=_errors(400, 401, 503),
)
def create_upload() -> Response[dict[str, Any]]:
    owner = _owner()
    backend = _backend()
    body = _json_body()
    content_type = body.get("content_type")
    if content_type not in UPLOAD_CONTENT_TYPES:
        raise InvalidRequest("content_type", f"must be one of {', '.join(sorted(UPLOAD_CONTENT_TYPES))}")
    filename = body.get("filename", "")
    if not isinstance(filename, str):
        raise InvalidRequest("filename", "must be a string")
    name = _safe_filename(filename) or "image" + (mimetypes.guess_extension(content_type) or "")
    # A fresh folder per upload: the URL can only ever write this one new key.
    key = owner_key(owner, f"uploads/{secrets.token_hex(8)}/{name}", backend.services.settings.owner_prefix)
    expires_in = backend.services.settings.upload_url_expires
    upload = backend.sign_upload(key, content_type, expires_in)
    _count("UploadsPresigned")
    return _json(200, {"key": key, "expires_in": expires_in} | upload)


def _safe_filename(filename: str) -> str:
    """The last path component, without control characters, at most 200 characters."""
    name = re.split(r"[/\\]", filename)[-1]
    name = "".join(c for c in name if c.isprintable()).strip()
    return "" if name in {"", ".", ".."} else name[-200:]


# --- Thumbnails ----------------------------------------------------------------------------


@app.get(
    "/thumbnails/<key>",
    summary="A JPEG thumbnail of one of the caller's images",
    description=f"`size` (the longer side) is one of {', '.join(map(str, THUMBNAIL_SIZES))}; made once, then cached.",
    tags=["images"],
    security=_JWT,
    responses=_errors(400, 401, 404, 415, 503),
    enable_validation=False,  # a binary answer: nothing to validate, and pydantic would try to decode it
)
def thumbnail(key: str) -> Response[bytes]:
    owner = _owner()
    backend = _backend()
    size = _thumbnail_size(app.current_event.query_string_parameters.get("size"))
    objects = backend.services.objects
    stored = objects.head(key) if owner_from_key(key, backend.services.settings.owner_prefix) == owner else None
    if stored is None:
        raise NotFound(f"no image {key!r}")
    tag = hashlib.blake2b(
        f"{objects.bucket}\x00{key}\x00{stored.etag}\x00{stored.version_id}\x00{size}".encode(), digest_size=16
    ).hexdigest()
    headers = {"ETag": f'"{tag}"', "Cache-Control": "private, max-age=3600"}
    if tag in app.current_event.headers.get("if-none-match", ""):
        return Response(304, None, b"", headers=headers)
    data = backend.thumbnails.get(tag, lambda: make_thumbnail(objects.get(key), size))
    return Response(200, "image/jpeg", data, headers=headers)


def _thumbnail_size(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_THUMBNAIL_SIZE
    if not raw.isdigit() or int(raw) not in THUMBNAIL_SIZES:
        raise InvalidRequest("size", f"must be one of {', '.join(map(str, THUMBNAIL_SIZES))}, got {raw!r}")
    return int(raw)


def make_thumbnail(data: bytes, size: int) -> bytes:
    """A JPEG no larger than ``size`` on its longer side (decoded with the indexer's own decoder)."""
    image = decode(data).image
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85, optimize=True)
    return out.getvalue()


class ThumbnailCache:
    """Thumbnails made once per (object version, size): an in-process LRU over a directory."""

    def __init__(self, directory: Path, max_items: int = 512) -> None:
        self.directory = directory
        self.max_items = max_items
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, tag: str, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            if tag in self._memory:
                self._memory.move_to_end(tag)
                return self._memory[tag]
        path = self.directory / tag[:2] / f"{tag}.jpg"
        try:
            data = path.read_bytes()
        except OSError:
            data = make()
            self._write(path, data)
        with self._lock:
            self._memory[tag] = data
            while len(self._memory) > self.max_items:
                self._memory.popitem(last=False)
        return data

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
            partial.write_bytes(data)
            partial.replace(path)  # atomic: a reader never sees half a file
        except OSError:
            logger.warning("could not cache a thumbnail", extra={"path": str(path)}, exc_info=True)


# --- Health, OpenAPI and the page ----------------------------------------------------------


@app.get("/health", summary="Do the stores answer?", tags=["operations"])
def health() -> Response[dict[str, Any]]:
    services = _backend().services
    probe_id = "0" * 32  # an id no image has: each store is asked a real question with no answer
    checks: dict[str, Callable[[], object]] = {
        "hash_index": lambda: services.hashes.get([probe_id], None),
        "vector_index": lambda: services.vectors.get([probe_id], None),
        "object_store": lambda: services.objects.head(f"{services.settings.owner_prefix}.health"),
    }
    results = {name: _probe(name, check) for name, check in checks.items()}
    healthy = all(result == "ok" for result in results.values())
    return _json(200 if healthy else 503, {"status": "ok" if healthy else "unavailable", "checks": results})


def _probe(name: str, check: Callable[[], object]) -> str:
    try:
        check()
    except Exception as exc:
        logger.warning("health check failed", extra={"store": name}, exc_info=True)
        return f"unavailable: {type(exc).__name__}"
    return "ok"


@app.get("/openapi.json", summary="This API's OpenAPI document", tags=["operations"], enable_validation=False)
def openapi_document() -> Response[dict[str, Any]]:
    document: dict[str, Any] = json.loads(app.get_openapi_json_schema())
    for operations in document["paths"].values():
        for operation in operations.values():
            # Powertools documents its validation errors as 422; this API answers them 400.
            operation["responses"].pop("422", None)
    return _json(200, document)


@app.get("/", include_in_schema=False, enable_validation=False)
def page() -> Response[bytes]:
    return _web_file("index.html")


@app.get("/static/<path>", include_in_schema=False, enable_validation=False)
def static(path: str) -> Response[bytes]:
    return _web_file(path)


def _web_file(relative: str) -> Response[bytes]:
    """A file of the search page, only from inside ``lookalike/web``."""
    root = WEB_ROOT.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise NotFound(f"no file {relative!r}")
    content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type in {"application/javascript", JSON}:
        content_type += "; charset=utf-8"
    cache = "no-cache" if target.suffix == ".html" else "public, max-age=300"
    return Response(200, content_type, target.read_bytes(), headers={"Cache-Control": cache})


# --- Errors: the one place where they become HTTP statuses ---------------------------------


def error_response(exc: Exception) -> Response[dict[str, Any]]:
    """The JSON error for ``exc``; never a 500 for bad input, never internals in a 500."""
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        location = first.get("loc") or ("request",)
        exc = InvalidRequest(str(location[-1]), str(first.get("msg", "is invalid")))
    error: dict[str, Any]
    if isinstance(exc, InvalidRequest):
        status, error = 400, {"parameter": exc.parameter}
    elif isinstance(exc, Unauthenticated):
        status, error = 401, {}
    elif isinstance(exc, NotFound):
        status, error = 404, {}
    elif isinstance(exc, ImageRejected):
        status, error = _REJECTION_STATUS.get(exc.reason, 400), {"reason": exc.reason}
    elif isinstance(exc, StoreUnavailable):
        logger.warning("store unavailable", exc_info=exc)
        status, error = 503, {}
    else:
        logger.error("unexpected error", exc_info=exc)
        return _json(500, {"error": {"code": "internal_error", "message": "something went wrong on our side"}})
    return _json(status, {"error": {"code": exc.code, "message": exc.message, **error}})


app.exception_handler([LookalikeError, RequestValidationError, Exception])(error_response)


@app.not_found
def _no_route(exc: NotFoundError) -> Response[dict[str, Any]]:
    return _json(404, {"error": {"code": "not_found", "message": "no such route"}})


# --- Request helpers -----------------------------------------------------------------------


def _backend() -> ApiBackend:
    backend: ApiBackend | Callable[[], ApiBackend] = app.context["backend"]
    return backend if isinstance(backend, ApiBackend) else backend()


def _count(name: str) -> None:
    metrics: Metrics | None = app.context.get("metrics")
    if metrics is not None:
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)


def _owner() -> str:
    """The verified JWT's subject: the only source of the owner."""
    subject = app.current_event.request_context.authorizer.jwt_claim.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthenticated("this route needs a verified JWT with a 'sub' claim")
    try:
        return validate_owner(subject)
    except InvalidRequest as exc:
        raise Unauthenticated("the token's subject cannot name an owner") from exc


def _is_json() -> bool:
    content_type = app.current_event.headers.get("content-type", "").split(";")[0].strip().lower()
    return content_type == JSON or content_type.endswith("+json")


def _body_bytes() -> bytes:
    event = app.current_event
    body = event.body or ""
    if len(body) > SYNC_PAYLOAD_LIMIT:
        raise ImageRejected(
            "too_large",
            f"the request is over Lambda's {SYNC_PAYLOAD_LIMIT // 2**20} MB synchronous payload limit: "
            "upload the image with POST /uploads, then search by its key",
        )
    if not event.is_base64_encoded:
        return body.encode()
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest("body", "isBase64Encoded is set but the body is not valid base64") from exc


def _json_body() -> dict[str, Any]:
    try:
        payload = json.loads(_body_bytes() or b"null")
    except ValueError as exc:
        raise InvalidRequest("body", f"is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidRequest("body", "must be a JSON object")
    return payload


def _json(status: int, body: dict[str, Any]) -> Response[dict[str, Any]]:
    return Response(status_code=status, content_type=JSON, body=body)


def _thumbnail_url(key: str) -> str:
    """Relative to the API's root (the stage, when it is in the path)."""
    stage = app.current_event.request_context.stage
    base = f"/{stage}" if stage and stage != "$default" else ""
    return f"{base}/thumbnails/{quote(key, safe='/')}"

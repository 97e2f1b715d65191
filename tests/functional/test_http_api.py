"""The HTTP API through the search Lambda handler: API Gateway v2 events in, JSON (or JPEG) out.

One gallery for the module on real backends (S3 on moto, Milvus Lite, SQLite): ann's photos,
an edited copy, and bob's images that ann must never see.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

import boto3
import pytest
import requests
from PIL import Image

from lookalike.adapters.sqlite_hashes import SqliteHashIndex
from lookalike.edges import http_api, upload_events
from lookalike.errors import StoreUnavailable
from lookalike.identity import content_sha256
from lookalike.signatures import SignatureExtractor
from tests.functional.conftest import (
    FakeLambdaContext,
    Stack,
    jpeg,
    load_event,
    load_handler,
    make_stack,
    photo_bytes,
    point_aws_at,
    s3_notification,
    sqs_event,
)

ANN, BOB = "ann", "bob"
REAL_CLOUD_BACKEND = http_api.cloud_backend  # the module's api fixture replaces it


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        error: dict[str, Any] = self.json()["error"]
        return error


@dataclass
class Api:
    stack: Stack
    function: ModuleType  # functions/search_api/app.py
    keys: dict[str, str]  # name → key
    data: dict[str, bytes]  # name → bytes
    last_request_id: str = ""

    def _next_request_id(self) -> str:
        self.last_request_id = str(uuid.uuid4())
        return self.last_request_id

    def call(
        self,
        method: str,
        path: str,
        *,
        owner: str | None = ANN,
        body: bytes | dict[str, Any] | str | None = None,
        content_type: str | None = None,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        base64_body: bool | None = None,
    ) -> Reply:
        """Call the Lambda handler with the event API Gateway would send (path decoded, as it does)."""
        sent_headers = {"host": "api.example.com", "user-agent": "pytest"} | (headers or {})
        if isinstance(body, dict):
            body, content_type = json.dumps(body), content_type or "application/json"
        if content_type:
            sent_headers["content-type"] = content_type
        encoded = isinstance(body, bytes) if base64_body is None else base64_body
        text = base64.b64encode(body).decode() if isinstance(body, bytes) else body
        context: dict[str, Any] = {
            "accountId": "123456789012",
            "apiId": "api",
            "domainName": "api.example.com",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7"},
            "requestId": self._next_request_id(),
            "routeKey": "$default",
            "stage": "$default",
            "timeEpoch": 1795000000000,
        }
        if owner is not None:
            context["authorizer"] = {"jwt": {"claims": {"sub": owner, "iss": "https://issuer"}, "scopes": None}}
        event: dict[str, Any] = {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": "&".join(f"{k}={quote(v)}" for k, v in (query or {}).items()),
            "headers": sent_headers,
            "requestContext": context,
            "isBase64Encoded": encoded,
        }
        if query:
            event["queryStringParameters"] = query
        if text is not None:
            event["body"] = text
        response = self.function.handler(event, FakeLambdaContext())
        payload = response.get("body") or ""
        data = base64.b64decode(payload) if response.get("isBase64Encoded") else payload.encode()
        return Reply(response["statusCode"], {k.lower(): v for k, v in response["headers"].items()}, data)


def edited(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return jpeg(image.resize((image.width * 4 // 5, image.height * 4 // 5)), quality=70)


@pytest.fixture(scope="module")
def api(
    moto_url: str, extractor: SignatureExtractor, photos: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    folder = tmp_path_factory.mktemp("api")
    with pytest.MonkeyPatch.context() as patch:
        point_aws_at(patch, moto_url)
        stack = make_stack(folder, extractor, SqliteHashIndex(folder / "hashes.sqlite"))
        backend = http_api.s3_backend(stack.services, folder / "thumbnails")
        patch.setattr(http_api, "cloud_backend", lambda: backend)
        sample = [photo_bytes(p) for p in photos[:5]]
        data = {
            "goldfish": sample[0],
            "goldfish copy": edited(sample[0]),
            "shark": sample[1],
            "ray": sample[2],
            "café au lait": sample[3],
            "bob goldfish": sample[0],
            "bob secret": sample[4],
            "alice": sample[1],
        }
        keys = {name: f"users/{ANN}/{name}.jpg" for name in data} | {
            "bob goldfish": f"users/{BOB}/goldfish.jpg",
            "bob secret": f"users/{BOB}/secret.jpg",
            "alice": "users/alice/red flower.jpg",  # the key the sample events in events/ name
        }
        notifications = []
        for name, key in keys.items():
            stack.put(key, data[name])
            notifications.append(s3_notification(stack.bucket, key))
        response = upload_events.handle_upload_events(sqs_event(*notifications), stack.services)
        assert response["batchItemFailures"] == []
        yield Api(stack, load_handler("search_api"), keys, data)
        stack.services.close()


def hits(answer: dict[str, Any], tier: str) -> list[str]:
    return [hit["key"] for hit in answer[tier]]


@pytest.mark.parametrize("content_type", ["image/jpeg", "application/octet-stream"])
def test_search_by_image_finds_the_original_and_its_edited_copy(api: Api, content_type: str) -> None:
    reply = api.call("POST", "/search", body=api.data["goldfish"], content_type=content_type)

    assert reply.status == 200
    answer = reply.json()
    assert hits(answer, "exact") == [api.keys["goldfish"]]
    assert api.keys["goldfish copy"] in hits(answer, "duplicates")
    every_hit = [hit for tier in ("exact", "duplicates", "similar") for hit in answer[tier]]
    assert all(hit["key"].startswith(f"users/{ANN}/") for hit in every_hit)
    assert all(hit["thumbnail_url"] == "/thumbnails/" + quote(hit["key"]) for hit in every_hit)


def test_search_parameters_come_from_the_query_string_for_image_bodies(api: Api) -> None:
    reply = api.call("POST", "/search", body=api.data["shark"], query={"page_size": "1", "min_similarity": "0"})

    answer = reply.json()
    assert reply.status == 200
    assert answer["page_size"] == 1 and len(answer["similar"]) <= 1
    assert answer["thresholds"]["min_similarity"] == 0.0


def test_a_body_not_flagged_base64_is_taken_as_it_is(api: Api) -> None:
    reply = api.call("POST", "/search", body="plain text, not an image", content_type="text/plain")

    assert reply.status == 415
    assert reply.error["reason"] == "not_an_image"


def test_search_by_key_uses_the_stored_image_and_skips_itself(api: Api) -> None:
    key = api.keys["goldfish"]

    reply = api.call("POST", "/search", body={"key": key, "page_size": 5})

    answer = reply.json()
    assert reply.status == 200
    assert answer["query"]["key"] == key
    assert key not in hits(answer, "exact") + hits(answer, "duplicates") + hits(answer, "similar")
    assert api.keys["goldfish copy"] in hits(answer, "duplicates")


@pytest.mark.parametrize(
    ("method", "route"),
    [("POST", "/search"), ("GET", "/images/{}"), ("GET", "/thumbnails/{}"), ("DELETE", "/images/{}")],
)
def test_another_owners_key_is_answered_exactly_like_a_missing_one(api: Api, method: str, route: str) -> None:
    foreign, missing = api.keys["bob secret"], f"users/{BOB}/no such image.jpg"

    def ask(key: str) -> Reply:
        if method == "POST":
            return api.call("POST", "/search", body={"key": key})
        return api.call(method, route.format(key))

    theirs, nothing = ask(foreign), ask(missing)

    assert theirs.status == nothing.status == 404
    assert theirs.body.decode() == nothing.body.decode().replace(missing, foreign)
    assert api.stack.s3.head_object(Bucket=api.stack.bucket, Key=foreign)  # DELETE left it alone


@pytest.mark.parametrize(
    ("query", "json_body", "parameter"),
    [
        ({"page": "0"}, None, "page"),
        ({"page_size": "1000"}, None, "page_size"),
        ({"page": "abc"}, None, "page"),
        ({"duplicate_distance": "99"}, None, "duplicate_distance"),
        ({"min_similarity": "0.99", "duplicate_similarity": "0.9"}, None, "min_similarity"),
        (None, {"page_size": 1000}, "page_size"),
        (None, {"page": 0}, "page"),
        (None, {"page": "2"}, "page"),
        (None, {"page": 1.5}, "page"),
        (None, {"page": True}, "page"),
        (None, {"key": ""}, "key"),
    ],
)
def test_bad_search_parameters_are_400_naming_the_parameter(
    api: Api, query: dict[str, str] | None, json_body: dict[str, Any] | None, parameter: str
) -> None:
    body = api.data["shark"] if json_body is None else {"key": api.keys["shark"]} | json_body

    reply = api.call("POST", "/search", body=body, query=query)

    assert reply.status == 400
    assert reply.error["code"] == "invalid_request"
    assert reply.error["parameter"] == parameter


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"%PDF-1.7 a document, not a picture", 415, "unsupported_format"),
        (b"\x00\x01\x02 random bytes", 415, "not_an_image"),
        (b"", 400, "empty"),
    ],
)
def test_bodies_that_are_not_images_are_answered_with_the_reason(
    api: Api, body: bytes, status: int, reason: str
) -> None:
    reply = api.call("POST", "/search", body=body, content_type="application/octet-stream")

    assert (reply.status, reply.error["code"], reply.error["reason"]) == (status, "image_rejected", reason)


def test_a_truncated_jpeg_is_400_with_its_reason(api: Api) -> None:
    data = api.data["ray"]

    reply = api.call("POST", "/search", body=data[: len(data) // 2], content_type="image/jpeg")

    assert reply.status == 400
    assert reply.error["reason"] == "truncated"


def test_malformed_bodies_are_400(api: Api) -> None:
    bad_json = api.call("POST", "/search", body="{not json", content_type="application/json", base64_body=False)
    bad_base64 = api.call("POST", "/search", body="@@@ not base64 @@@", content_type="image/jpeg", base64_body=True)

    assert (bad_json.status, bad_json.error["parameter"]) == (400, "body")
    assert (bad_base64.status, bad_base64.error["parameter"]) == (400, "body")


def test_a_body_over_the_synchronous_limit_is_413_and_points_to_uploads(api: Api) -> None:
    huge = "A" * (http_api.SYNC_PAYLOAD_LIMIT + 4)

    reply = api.call("POST", "/search", body=huge, content_type="image/jpeg", base64_body=True)

    assert reply.status == 413
    assert "POST /uploads" in reply.error["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/search"),
        ("GET", "/images"),
        ("GET", "/images/users/ann/goldfish.jpg"),
        ("DELETE", "/images/users/ann/goldfish.jpg"),
        ("POST", "/uploads"),
        ("GET", "/thumbnails/users/ann/goldfish.jpg"),
    ],
)
def test_data_routes_without_claims_are_401(api: Api, method: str, path: str) -> None:
    reply = api.call(method, path, owner=None, body={"content_type": "image/jpeg"})

    assert reply.status == 401
    assert reply.error["code"] == "unauthorized"
    assert api.stack.s3.head_object(Bucket=api.stack.bucket, Key=api.keys["goldfish"])


def test_an_upload_is_presigned_for_one_new_key_under_the_callers_prefix(api: Api) -> None:
    reply = api.call("POST", "/uploads", body={"content_type": "image/jpeg", "filename": "../../bob/holiday.jpg"})

    assert reply.status == 200
    upload = reply.json()
    key = upload["key"]
    assert key.startswith(f"users/{ANN}/uploads/") and key.endswith("/holiday.jpg")
    assert upload["method"] == "POST" and upload["fields"]["key"] == key
    assert upload["expires_in"] == api.stack.settings.upload_url_expires
    policy = json.loads(base64.b64decode(upload["fields"]["policy"]))
    assert {"key": key} in policy["conditions"]
    assert {"Content-Type": "image/jpeg"} in policy["conditions"]
    assert ["content-length-range", 1, api.stack.settings.max_object_bytes] in policy["conditions"]

    sent = requests.post(
        upload["url"], data=upload["fields"], files={"file": ("holiday.jpg", api.data["ray"], "image/jpeg")}, timeout=10
    )

    assert sent.ok
    assert api.stack.s3.get_object(Bucket=api.stack.bucket, Key=key)["Body"].read() == api.data["ray"]
    api.stack.delete(key)


@pytest.mark.parametrize("body", [{"content_type": "text/html"}, {"content_type": "image/jpeg", "filename": 7}])
def test_an_upload_request_is_validated(api: Api, body: dict[str, Any]) -> None:
    reply = api.call("POST", "/uploads", body=body)

    assert reply.status == 400
    assert reply.error["parameter"] in {"content_type", "filename"}


def test_listing_pages_through_the_callers_images_only(api: Api) -> None:
    seen: list[str] = []
    query = {"page_size": "2"}
    while True:
        reply = api.call("GET", "/images", query=query)
        assert reply.status == 200
        page = reply.json()
        seen += [image["key"] for image in page["images"]]
        if not page["has_more"]:
            break
        query = {"page_size": "2", "continuation_token": page["next_token"]}

    ann = sorted(key for key in api.keys.values() if key.startswith(f"users/{ANN}/"))
    assert seen == ann
    second = api.call("GET", "/images", query={"page_size": "2", "page": "2"}).json()
    assert [image["key"] for image in second["images"]] == ann[2:4]


def test_listing_newest_first_reports_what_is_indexed(api: Api) -> None:
    reply = api.call("GET", "/images", query={"order": "newest", "page_size": "100"})

    images = reply.json()["images"]
    assert sorted(image["key"] for image in images) == sorted(k for k in api.keys.values() if "/ann/" in k)
    assert all(image["indexed"] and image["width"] for image in images)
    stamps = [image["indexed_at"] for image in images]
    assert stamps == sorted(stamps, reverse=True)


@pytest.mark.parametrize(
    "query", [{"page_size": "0"}, {"continuation_token": "garbage"}, {"order": "random"}, {"page": "-1"}]
)
def test_bad_listing_parameters_are_400(api: Api, query: dict[str, str]) -> None:
    reply = api.call("GET", "/images", query=query)

    assert reply.status == 400
    assert reply.error["parameter"] in query


def test_an_image_record_is_served_for_its_owner(api: Api) -> None:
    key = api.keys["café au lait"]

    reply = api.call("GET", f"/images/{key}")

    assert reply.status == 200
    record = reply.json()
    assert record["key"] == key and record["sha256"] == content_sha256(api.data["café au lait"])


def test_a_thumbnail_is_a_small_jpeg_with_validators(api: Api) -> None:
    path = f"/thumbnails/{api.keys['café au lait']}"

    reply = api.call("GET", path, query={"size": "64"})

    assert reply.status == 200 and reply.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(reply.body)) as thumbnail:
        assert thumbnail.format == "JPEG" and max(thumbnail.size) == 64
    assert "max-age" in reply.headers["cache-control"]
    again = api.call("GET", path, query={"size": "64"}, headers={"if-none-match": reply.headers["etag"]})
    assert again.status == 304 and again.body == b""
    assert api.call("GET", path, query={"size": "100"}).error["parameter"] == "size"


def test_delete_removes_the_object_and_answers_202(api: Api) -> None:
    key = f"users/{ANN}/to delete.jpg"
    api.stack.put(key, api.data["shark"])

    reply = api.call("DELETE", f"/images/{key}")

    assert reply.status == 202
    assert not api.stack.s3.list_objects_v2(Bucket=api.stack.bucket, Prefix=key).get("Contents")


def test_health_checks_every_store(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    assert api.call("GET", "/health", owner=None).json() == {
        "status": "ok",
        "checks": {"hash_index": "ok", "vector_index": "ok", "object_store": "ok"},
    }

    def down(*args: Any) -> Any:
        raise StoreUnavailable("gone")

    monkeypatch.setattr(api.stack.services.vectors, "get", down)
    reply = api.call("GET", "/health", owner=None)

    assert reply.status == 503
    assert reply.json()["checks"]["vector_index"].startswith("unavailable")


def test_store_failures_are_503_and_unexpected_ones_500_without_details(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    searcher = api.stack.services.searcher

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("the vector index is down")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("internal detail /secret/path")

    monkeypatch.setattr(searcher, "search_image", unavailable)
    assert api.call("POST", "/search", body=api.data["ray"]).status == 503
    monkeypatch.setattr(searcher, "search_image", broken)
    reply = api.call("POST", "/search", body=api.data["ray"])

    assert reply.status == 500
    assert reply.error["code"] == "internal_error"
    assert b"secret" not in reply.body


def test_openapi_lists_the_routes(api: Api) -> None:
    reply = api.call("GET", "/openapi.json", owner=None)

    document = reply.json()
    assert reply.status == 200
    assert document["info"]["title"] == "lookalike"
    assert {"/search", "/images", "/images/{key}", "/uploads", "/thumbnails/{key}", "/health"} <= set(document["paths"])
    assert set(document["paths"]["/images/{key}"]) == {"get", "delete"}
    assert {"401", "404"} <= set(document["paths"]["/images/{key}"]["get"]["responses"])
    assert document["paths"]["/search"]["post"]["security"] == [{"jwt": []}]
    responses = [op["responses"] for path in document["paths"].values() for op in path.values()]
    assert all("422" not in answers for answers in responses)  # validation errors are answered 400


def test_unknown_routes_are_json_404(api: Api) -> None:
    reply = api.call("GET", "/nothing/here")

    assert reply.status == 404 and reply.error["code"] == "not_found"


def test_the_page_and_its_files_are_public_and_confined(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<!doctype html><title>lookalike</title>")
    (web / "app.js").write_text("console.log('hi')")
    (tmp_path / "secret.txt").write_text("not for you")
    monkeypatch.setattr(http_api, "WEB_ROOT", web)

    page = api.call("GET", "/", owner=None)
    script = api.call("GET", "/static/app.js", owner=None)

    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    assert b"<title>lookalike</title>" in page.body
    assert script.status == 200 and "javascript" in script.headers["content-type"]
    for path in ("/static/../secret.txt", "/static/missing.css", "/static//etc/passwd"):
        assert api.call("GET", path, owner=None).status == 404, path


def test_the_correlation_id_is_the_request_id(api: Api) -> None:
    api.call("GET", "/health")

    assert api.function.logger.get_correlation_id() == api.last_request_id


@pytest.mark.parametrize(
    "name", ["api-health.json", "api-get-image.json", "api-search-image.json", "api-search-key.json"]
)
def test_the_sample_api_events_are_answered(api: Api, name: str) -> None:
    response = api.function.handler(load_event(name), FakeLambdaContext())

    assert response["statusCode"] == 200, response["body"]
    answer = json.loads(response["body"])
    assert "error" not in answer
    if name == "api-get-image.json":
        assert answer["key"] == api.keys["alice"]


def test_the_sample_upload_event_is_presigned_under_alices_prefix(api: Api) -> None:
    response = api.function.handler(load_event("api-create-upload.json"), FakeLambdaContext())

    assert response["statusCode"] == 200
    assert json.loads(response["body"])["key"].startswith("users/alice/uploads/")


def test_the_lambda_builds_its_backend_from_the_environment(
    aws: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No stand-in backend: settings from the environment, services built once per container."""
    from lookalike.bootstrap import services_from_env

    bucket = f"gallery-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    monkeypatch.setenv("LOOKALIKE_BUCKET", bucket)
    monkeypatch.setenv("LOOKALIKE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LOOKALIKE_MODEL_THREADS", "1")
    monkeypatch.setattr(http_api, "cloud_backend", REAL_CLOUD_BACKEND)
    REAL_CLOUD_BACKEND.cache_clear()
    services_from_env.cache_clear()
    try:
        handler = load_handler("search_api")
        document = handler.handler(_event("GET", "/openapi.json"), FakeLambdaContext())
        assert document["statusCode"] == 200
        assert services_from_env.cache_info().currsize == 0  # no model loaded for a public document
        health = handler.handler(_event("GET", "/health"), FakeLambdaContext())
        upload = handler.handler(
            _event("POST", "/uploads", json.dumps({"content_type": "image/png"})), FakeLambdaContext()
        )

        assert health["statusCode"] == 200
        presigned = json.loads(upload["body"])
        assert presigned["url"].startswith(aws) and presigned["key"].startswith(f"users/{ANN}/uploads/")
        assert REAL_CLOUD_BACKEND() is REAL_CLOUD_BACKEND()
    finally:
        services_from_env().close()
        services_from_env.cache_clear()
        REAL_CLOUD_BACKEND.cache_clear()


def _event(method: str, path: str, body: str | None = None) -> dict[str, Any]:
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {
            "http": {"method": method, "path": path, "sourceIp": "203.0.113.7"},
            "requestId": "r-1",
            "stage": "$default",
            "authorizer": {"jwt": {"claims": {"sub": ANN}}},
        },
        "body": body,
        "isBase64Encoded": False,
    }


def test_every_answer_publishes_a_metric_of_its_class(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    # Powertools warns about (and publishes nothing for) an invocation without metrics.
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert api.call("GET", "/openapi.json", owner=None).status == 200
        assert api.call("GET", "/images", query={"page_size": "0"}).status == 400
    published = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    names = [
        metric["Name"] for record in published for m in record["_aws"]["CloudWatchMetrics"] for metric in m["Metrics"]
    ]
    assert "Answers" in names
    assert "ClientErrors" in names

"""The sample events in events/ are the real shapes: Powertools parses them, and they agree
with each other and with the template (the same files drive `sam local invoke` and the
handler tests, so a wrong shape here would hide a bug there)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from datetime import datetime
from typing import Any
from urllib.parse import unquote_plus

import pytest
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2, S3Event, SQSEvent
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from PIL import Image

from tests.conftest import REPO_ROOT

EVENTS_DIR = REPO_ROOT / "events"
SQS_EVENTS = sorted(p.name for p in EVENTS_DIR.glob("sqs-*.json"))
API_EVENTS = sorted(p.name for p in EVENTS_DIR.glob("api-*.json"))
# The template names the bucket "<stack>-uploads-<account>-<region>".
BUCKET_NAME = re.compile(r"^[a-z0-9-]{1,27}-uploads-\d{12}-[a-z]{2}(-[a-z]+)+-\d$")
OWNER = "alice"


def load(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS_DIR / name).read_text())
    return event


def s3_events(name: str) -> list[tuple[SQSRecord, S3Event]]:
    """Each SQS record of the file with the S3 notification its body carries."""
    records = SQSEvent(load(name)).records
    return [(record, S3Event(json.loads(record.body))) for record in records if '"Records"' in record.body]


def decoded_keys(name: str) -> list[str]:
    return [s3.object_key for _, s3 in s3_events(name)]


def epoch_ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def test_the_expected_samples_exist() -> None:
    assert SQS_EVENTS == [
        "sqs-s3-delete.json",
        "sqs-s3-lifecycle-expiration.json",
        "sqs-s3-overwrite.json",
        "sqs-s3-put.json",
        "sqs-s3-test-event.json",
    ]
    assert API_EVENTS == [
        "api-create-upload.json",
        "api-get-image.json",
        "api-health.json",
        "api-search-image.json",
        "api-search-key.json",
    ]


@pytest.mark.parametrize("name", SQS_EVENTS)
def test_sqs_records_are_what_the_queue_delivers(name: str) -> None:
    for record in SQSEvent(load(name)).records:
        assert record.event_source == "aws:sqs"
        assert re.fullmatch(r"arn:aws:sqs:[a-z0-9-]+:\d{12}:[\w-]+", record.event_source_arn)
        assert record.md5_of_body == hashlib.md5(record.body.encode()).hexdigest()  # noqa: S324 (SQS's own checksum)
        assert int(record.attributes.approximate_receive_count) >= 1
        assert int(record.attributes.approximate_first_receive_timestamp) >= int(record.attributes.sent_timestamp)
        assert record.message_id and record.receipt_handle


@pytest.mark.parametrize("name", [n for n in SQS_EVENTS if n != "sqs-s3-test-event.json"])
def test_s3_notifications_parse_and_precede_their_messages(name: str) -> None:
    pairs = s3_events(name)
    assert pairs
    for message, s3 in pairs:
        (record,) = s3.records
        assert record.event_source == "aws:s3"
        assert record.event_version in {"2.1", "2.2", "2.3"}
        assert BUCKET_NAME.match(s3.bucket_name), s3.bucket_name
        assert record.s3.get_object.version_id, "the bucket is versioned: every event names a version"
        assert re.fullmatch(r"[0-9A-F]{18}", record.s3.get_object.sequencer)
        assert epoch_ms(record.event_time) <= int(message.attributes.sent_timestamp)


def test_keys_arrive_form_encoded_and_decode_with_unquote_plus() -> None:
    raw = [s3.record.s3.get_object.key for _, s3 in s3_events("sqs-s3-put.json")]
    assert raw == ["users/alice/red+flower.jpg", "users/alice/l%27%C3%A9t%C3%A9+%C3%A0+Paris+1%2B1.jpg"]
    # '+' is a space, a literal plus is %2B; Powertools' object_key decodes exactly like unquote_plus.
    assert decoded_keys("sqs-s3-put.json") == [unquote_plus(key) for key in raw]
    assert decoded_keys("sqs-s3-put.json") == ["users/alice/red flower.jpg", "users/alice/l'été à Paris 1+1.jpg"]


def test_every_key_lies_under_its_owners_prefix() -> None:
    for name in SQS_EVENTS:
        for key in decoded_keys(name):
            assert key.startswith(f"users/{OWNER}/"), (name, key)


def test_puts_carry_size_and_etag_and_removals_do_not() -> None:
    for name, kinds in [
        ("sqs-s3-put.json", {"ObjectCreated:Put"}),
        ("sqs-s3-overwrite.json", {"ObjectCreated:Put"}),
        ("sqs-s3-delete.json", {"ObjectRemoved:Delete", "ObjectRemoved:DeleteMarkerCreated"}),
        ("sqs-s3-lifecycle-expiration.json", {"LifecycleExpiration:Delete"}),
    ]:
        records = [s3.record for _, s3 in s3_events(name)]
        assert {r.event_name for r in records} == kinds, name
        for r in records:
            created = r.event_name.startswith("ObjectCreated:")
            assert ("size" in r.s3.get_object.raw_event) == created, name
            assert ("eTag" in r.s3.get_object.raw_event) == created, name
            if created:
                assert r.s3.get_object.size > 0
                assert re.fullmatch(r"[0-9a-f]{32}", r.s3.get_object.etag)


def test_an_overwrite_is_two_versions_of_one_key_in_sequencer_order() -> None:
    records = [s3.record for _, s3 in s3_events("sqs-s3-overwrite.json")]
    assert len(records) == 2
    assert len({unquote_plus(r.s3.get_object.key) for r in records}) == 1
    assert len({r.s3.get_object.version_id for r in records}) == 2
    first, second = (r.s3.get_object.sequencer for r in records)
    # S3's rule: compare sequencers as hex numbers after padding to the same length.
    width = max(len(first), len(second))
    assert int(first.ljust(width, "0"), 16) < int(second.ljust(width, "0"), 16)
    assert records[0].s3.get_object.etag != records[1].s3.get_object.etag


def test_the_lifecycle_expiration_is_s3_acting_on_its_own() -> None:
    ((_, s3),) = s3_events("sqs-s3-lifecycle-expiration.json")
    record = s3.record
    assert record.event_version == "2.3"  # S3 uses 2.3 for lifecycle events
    assert record.user_identity.principal_id == "s3.amazonaws.com"


def test_the_test_event_is_not_a_notification() -> None:
    (record,) = SQSEvent(load("sqs-s3-test-event.json")).records
    body = json.loads(record.body)
    assert "Records" not in body
    assert (body["Service"], body["Event"]) == ("Amazon S3", "s3:TestEvent")
    assert BUCKET_NAME.match(body["Bucket"])


# ---------------------------------------------------------------------------- HTTP API


@pytest.mark.parametrize("name", API_EVENTS)
def test_api_events_are_http_api_v2_with_verified_claims(name: str) -> None:
    event = APIGatewayProxyEventV2(load(name))
    assert event.version == "2.0"
    assert event.route_key == event.request_context.route_key
    assert event.route_key.split(" ", 1)[0] == event.request_context.http.method
    assert event.raw_path == event.request_context.http.path
    assert event.request_context.stage == "$default"
    claims = event.request_context.authorizer.jwt_claim
    assert claims["sub"] == OWNER
    assert int(claims["iat"]) * 1000 <= event.request_context.time_epoch <= int(claims["exp"]) * 1000
    assert event.headers["authorization"].startswith("Bearer ")
    if event.body is not None:
        body = base64.b64decode(event.body) if event.is_base64_encoded else event.body.encode()
        assert int(event.headers["content-length"]) == len(body)


def test_the_image_search_carries_a_real_jpeg() -> None:
    event = APIGatewayProxyEventV2(load("api-search-image.json"))
    assert event.route_key == "POST /search"
    assert event.is_base64_encoded
    assert event.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(base64.b64decode(event.body or "")))
    image.load()
    assert image.format == "JPEG"
    assert min(image.size) >= 8


def test_the_key_search_names_an_uploaded_key() -> None:
    event = APIGatewayProxyEventV2(load("api-search-key.json"))
    assert not event.is_base64_encoded
    assert event.headers["content-type"] == "application/json"
    assert event.json_body == {"key": "users/alice/red flower.jpg", "page": 1, "page_size": 20}
    assert event.json_body["key"] in decoded_keys("sqs-s3-put.json")


def test_the_image_route_hands_the_key_decoded() -> None:
    # HTTP APIs deliver the path and its parameters already percent-decoded.
    event = APIGatewayProxyEventV2(load("api-get-image.json"))
    assert event.route_key == "GET /images/{key+}"
    assert event.path_parameters == {"key": "users/alice/red flower.jpg"}
    assert event.raw_path == "/images/" + event.path_parameters["key"]
    assert event.body is None


def test_the_upload_request_and_health_check() -> None:
    upload = APIGatewayProxyEventV2(load("api-create-upload.json"))
    assert (upload.route_key, upload.json_body) == ("POST /uploads", {"content_type": "image/jpeg"})
    health = APIGatewayProxyEventV2(load("api-health.json"))
    assert (health.route_key, health.body) == ("GET /health", None)

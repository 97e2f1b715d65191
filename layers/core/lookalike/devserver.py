"""`lookalike serve`: the local twin of the cloud deployment, on the embedded stores.

Each HTTP request becomes the API Gateway HTTP API (v2) event the Lambda would receive and
goes through the same resolver (:mod:`lookalike.edges.http_api`). The JWT authorizer is
stood in for by a dev mode that puts ``{"sub": <owner>}`` in every event: whoever can reach
the port acts as that owner, which is why the twin binds to 127.0.0.1 unless told otherwise.

The upload trigger is emulated too. ``POST /uploads`` answers with a URL to the twin itself,
``PUT /_local/objects/<key>?expires=..&signature=..``, signed with an HMAC secret made at
start, so a URL works for its one key and content type until it expires. The PUT stores the
bytes in the local object store, then delivers the S3-shaped SQS event the indexer consumes
through the same batch path (:mod:`lookalike.edges.upload_events`), synchronously: when the
PUT returns, the image is searchable. ``DELETE /images/<key>`` likewise delivers an
ObjectRemoved event.

Requests are served by threads, but every call into the services holds one lock: Milvus Lite
is a single process and its client is not meant to be shared across threads.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import io
import json
import logging
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, quote_plus, unquote, urlsplit

from lookalike.edges import http_api, upload_events
from lookalike.keys import owner_key, validate_owner
from lookalike.settings import LOCAL_BUCKET, Settings

if TYPE_CHECKING:
    from lookalike.bootstrap import Services
    from lookalike.ports import StoredObject

logger = logging.getLogger(__name__)

LOCAL_OWNER = "local"
UPLOAD_PATH = "/_local/objects/"
SQS_BATCH_SIZE = 10  # what an SQS event source delivers at most by default
SAMPLE_DATASET = Path(__file__).resolve().parents[3].parent / "shared" / "datasets" / "imagenet-samples-odd"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".avif"})
_TEXT_TYPES = ("text/", "application/json", "application/x-www-form-urlencoded", "application/javascript")


def main(argv: Sequence[str], *, settings: Settings, owner: str = LOCAL_OWNER) -> int:
    """Serve the twin until interrupted (Ctrl-C)."""
    argv = list(argv)
    args = _parser().parse_args(argv[1:] if argv[:1] == ["--"] else argv)  # `lookalike serve -- --port 0`
    owner = validate_owner(args.owner or owner)
    if not settings.local_objects:
        print(f"lookalike serve: using the local object store in {settings.data_dir}, not {settings.bucket}")
        settings = replace(settings, bucket=LOCAL_BUCKET)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"WARNING: binding to {args.host}: anyone who can reach this port acts as owner {owner!r} "
            "(the twin's dev mode stands in for the JWT authorizer). Use 127.0.0.1 unless you mean it.",
            file=sys.stderr,
        )

    from lookalike.bootstrap import build_services

    services = build_services(settings)
    try:
        twin = LocalTwin(services, owner)
        if args.sample_gallery is not None:
            source = Path(args.sample_gallery) if args.sample_gallery else None
            seed_sample_gallery(twin, source, args.sample_size)
        server = make_server(twin, args.host, args.port)
        host, port = server.server_address[:2]
        print(f"dev mode: every request acts as owner {owner!r} (standing in for the JWT authorizer)")
        print(f"lookalike serving on http://{_url_host(str(host))}:{port} (owner: {owner})", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    finally:
        services.close()
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lookalike serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 picks a free one)")
    parser.add_argument("--owner", help="the dev owner every request acts as (default: the CLI's --owner)")
    parser.add_argument(
        "--sample-gallery",
        nargs="?",
        const="",
        metavar="DIR",
        help="index sample images first if the gallery is empty: from DIR, else "
        "../shared/datasets/imagenet-samples-odd beside the repository, else generated pictures",
    )
    parser.add_argument("--sample-size", type=int, default=40, help="how many sample images (default: %(default)s)")
    return parser


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class LocalTwin:
    """The twin without its HTTP server: API events in, upload events delivered, one lock."""

    def __init__(self, services: Services, owner: str, *, secret: bytes | None = None) -> None:
        self.services = services
        self.owner = owner
        self.secret = secret or secrets.token_bytes(32)
        self.lock = threading.RLock()  # re-entrant: DELETE delivers its event while the API call holds it
        self.base_url = "http://127.0.0.1"  # of the request being answered, for the upload URLs
        self.backend = http_api.ApiBackend(
            services,
            sign_upload=self.sign_upload,
            thumbnails=http_api.ThumbnailCache(services.settings.data_dir / "thumbnails"),
            after_delete=self.object_removed,
        )

    def handle_api(self, event: dict[str, Any], base_url: str) -> dict[str, Any]:
        with self.lock:
            self.base_url = base_url
            return http_api.handle(event, None, self.backend)

    # --- the emulated bucket -------------------------------------------------------------

    def sign_upload(self, key: str, content_type: str, expires_in: int) -> dict[str, Any]:
        expires = int(time.time()) + expires_in
        signature = self._signature(key, expires, content_type)
        url = f"{self.base_url}{UPLOAD_PATH}{quote(key, safe='')}?expires={expires}&signature={signature}"
        return {"method": "PUT", "url": url, "headers": {"Content-Type": content_type}}

    def _signature(self, key: str, expires: int, content_type: str) -> str:
        message = f"PUT\n{key}\n{expires}\n{content_type}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def authorize_put(self, key: str, query: dict[str, str], content_type: str) -> str | None:
        """None when the URL is one this twin signed and still valid, else why not."""
        expires, signature = query.get("expires", ""), query.get("signature", "")
        if not expires.isdigit() or not signature:
            return "the upload URL is not signed"
        if not hmac.compare_digest(signature, self._signature(key, int(expires), content_type)):
            return "the signature does not match this key and content type"
        if int(expires) < time.time():
            return "the upload URL has expired"
        return None

    def put_object(self, key: str, data: bytes, content_type: str) -> StoredObject:
        """Store the object, then deliver its ObjectCreated event (indexed when this returns)."""
        with self.lock:
            stored = self.services.objects.put(key, data, content_type)
            self.deliver([("ObjectCreated:Put", key, stored)])
            return stored

    def object_removed(self, key: str) -> None:
        with self.lock:
            self.deliver([("ObjectRemoved:Delete", key, None)])

    def deliver(self, changes: Sequence[tuple[str, str, StoredObject | None]]) -> dict[str, Any]:
        """Hand S3-shaped notifications to the indexer's batch path, as SQS would."""
        with self.lock:
            event = sqs_event(self.services.objects.bucket, changes)
            response = dict(upload_events.handle_upload_events(event, self.services))
            if response.get("batchItemFailures"):
                logger.warning("some uploads were not indexed (a store failed): %s", response["batchItemFailures"])
            return response


def s3_notification(bucket: str, event_name: str, key: str, stored: StoredObject | None) -> dict[str, Any]:
    """One S3 event notification as S3 writes it to SQS (keys URL-encoded form style)."""
    now = datetime.now(UTC)
    obj: dict[str, Any] = {"key": quote_plus(key, safe="/"), "sequencer": f"{time.time_ns():020X}"}
    if stored is not None:
        obj |= {"size": stored.size, "eTag": stored.etag}
        if stored.version_id:
            obj["versionId"] = stored.version_id
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "local",
                "eventTime": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "eventName": event_name,
                "userIdentity": {"principalId": "local"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {"x-amz-request-id": uuid.uuid4().hex[:16].upper()},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "lookalike-local-uploads",
                    "bucket": {
                        "name": bucket,
                        "ownerIdentity": {"principalId": "local"},
                        "arn": f"arn:aws:s3:::{bucket}",
                    },
                    "object": obj,
                },
            }
        ]
    }


def sqs_event(bucket: str, changes: Sequence[tuple[str, str, StoredObject | None]]) -> dict[str, Any]:
    """The SQS event a Lambda receives for these changes: one message per S3 notification."""
    records = []
    for event_name, key, stored in changes:
        body = json.dumps(s3_notification(bucket, event_name, key, stored))
        records.append(
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": secrets.token_urlsafe(24),
                "body": body,
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": str(int(time.time() * 1000)),
                    "SenderId": "local",
                    "ApproximateFirstReceiveTimestamp": str(int(time.time() * 1000)),
                },
                "messageAttributes": {},
                "md5OfBody": hashlib.md5(body.encode(), usedforsecurity=False).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:local:000000000000:lookalike-uploads",
                "awsRegion": "local",
            }
        )
    return {"Records": records}


def api_event(
    method: str, target: str, headers: dict[str, str], body: bytes, *, owner: str, source_ip: str
) -> dict[str, Any]:
    """The API Gateway HTTP API (payload v2) event for one request, with the dev owner's claims."""
    split = urlsplit(target)
    path = unquote(split.path)  # HTTP APIs hand the function the decoded path
    lowered = {name.lower(): value for name, value in headers.items()}
    text = _as_text(body, lowered.get("content-type", ""))
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": split.query,
        "headers": lowered,
        "requestContext": {
            "accountId": "local",
            "apiId": "local",
            "authorizer": {"jwt": {"claims": {"sub": owner}, "scopes": None}},
            "domainName": lowered.get("host", "localhost"),
            "domainPrefix": "local",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": lowered.get("user-agent", ""),
            },
            "requestId": uuid.uuid4().hex,
            "routeKey": "$default",
            "stage": "$default",
            "time": datetime.fromtimestamp(now, UTC).strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now * 1000),
        },
        "body": text if text is not None else base64.b64encode(body).decode(),
        "isBase64Encoded": text is None,
    }
    query = parse_qs(split.query, keep_blank_values=True)
    if query:  # like API Gateway: repeated parameters joined with commas
        event["queryStringParameters"] = {name: ",".join(values) for name, values in query.items()}
    return event


def _as_text(body: bytes, content_type: str) -> str | None:
    """The body as text when API Gateway would pass it so (a text type, valid UTF-8), else None.

    A JPEG sent with curl's default form content type still arrives whole, base64-encoded.
    """
    if not content_type.startswith(_TEXT_TYPES):
        return None if body else ""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


def make_server(twin: LocalTwin, host: str, port: int) -> ThreadingHTTPServer:
    """A threaded HTTP server in front of ``twin`` (not started: call ``serve_forever``)."""

    class Handler(_TwinRequestHandler):
        pass

    Handler.twin = twin
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


class _TwinRequestHandler(BaseHTTPRequestHandler):
    twin: LocalTwin
    server_version = "lookalike-twin"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            if self.command == "PUT" and self.path.startswith(UPLOAD_PATH):
                self._put_object()
            else:
                self._api()
        except Exception:
            logger.exception("the twin failed to answer %s %s", self.command, self.path)
            self._send(500, {"Content-Type": "application/json"}, b'{"error": {"code": "internal_error"}}')

    def _api(self) -> None:
        body = self._body(limit=2 * http_api.SYNC_PAYLOAD_LIMIT)
        if body is None:
            return
        event = api_event(
            self.command,
            self.path,
            dict(self.headers.items()),
            body,
            owner=self.twin.owner,
            source_ip=self.client_address[0],
        )
        result = self.twin.handle_api(event, base_url=f"http://{self.headers.get('Host', 'localhost')}")
        payload = result.get("body") or ""
        data = base64.b64decode(payload) if result.get("isBase64Encoded") else payload.encode()
        headers = dict(result.get("headers") or {})
        for name, values in (result.get("multiValueHeaders") or {}).items():
            headers[name] = ", ".join(values)
        self._send(int(result["statusCode"]), headers, data, cookies=result.get("cookies") or [])

    def _put_object(self) -> None:
        split = urlsplit(self.path)
        key = unquote(split.path[len(UPLOAD_PATH) :])
        query = {name: values[-1] for name, values in parse_qs(split.query).items()}
        content_type = self.headers.get("Content-Type", "")
        refusal = self.twin.authorize_put(key, query, content_type)
        if refusal is not None:
            self._error(403, "forbidden", refusal, close=True)  # the unread body must not be taken for a request
            return
        body = self._body(limit=self.twin.services.settings.max_object_bytes)
        if body is None:
            return
        stored = self.twin.put_object(key, body, content_type)
        self._send(200, {"ETag": f'"{stored.etag}"'}, b"")

    def _body(self, limit: int) -> bytes | None:
        """The request body, or None after answering 413 when it is over ``limit``."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            self._error(413, "too_large", f"the body is over {limit} bytes", close=True)
            return None
        return self.rfile.read(length) if length else b""

    def _error(self, status: int, code: str, message: str, *, close: bool = False) -> None:
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        self._send(status, {"Content-Type": "application/json"}, body, close=close)

    def _send(
        self, status: int, headers: dict[str, str], data: bytes, *, cookies: Sequence[str] = (), close: bool = False
    ) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in {"content-length", "connection"}:
                self.send_header(name, value)
        for cookie in cookies:
            self.send_header("Set-Cookie", cookie)
        without_body = status in (HTTPStatus.NO_CONTENT, HTTPStatus.NOT_MODIFIED)
        self.send_header("Content-Length", "0" if without_body else str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if not without_body:
            self.wfile.write(data)


# --- The sample gallery ----------------------------------------------------------------------


def seed_sample_gallery(twin: LocalTwin, source: Path | None, size: int) -> int:
    """Put sample images in the owner's gallery (if it is empty) through the upload event path."""
    services = twin.services
    prefix = f"{services.settings.owner_prefix}{twin.owner}/"
    if next(services.objects.list(prefix), None) is not None:
        print(f"sample gallery: {twin.owner}'s gallery is not empty, nothing added")
        return 0
    samples = list(_sample_images(source, size))
    changes = []
    for name, data, content_type in samples:
        key = owner_key(twin.owner, f"samples/{name}", services.settings.owner_prefix)
        changes.append(("ObjectCreated:Put", key, services.objects.put(key, data, content_type)))
    failed = 0
    for start in range(0, len(changes), SQS_BATCH_SIZE):
        response = twin.deliver(changes[start : start + SQS_BATCH_SIZE])
        failed += len(response.get("batchItemFailures", []))
    print(f"sample gallery: {len(samples) - failed} images added to {twin.owner}'s gallery")
    return len(samples) - failed


def _sample_images(source: Path | None, size: int) -> Iterator[tuple[str, bytes, str]]:
    folder = source or (SAMPLE_DATASET if SAMPLE_DATASET.is_dir() else None)
    if folder is None:
        print(f"sample gallery: {size} generated pictures")
        yield from generated_pictures(size)
        return
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)[:size]
    print(f"sample gallery: the first {len(files)} images of {folder}")
    for path in files:
        yield path.name, path.read_bytes(), _content_type(path)


def _content_type(path: Path) -> str:
    import mimetypes

    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def generated_pictures(count: int, seed: int = 7) -> Iterator[tuple[str, bytes, str]]:
    """Synthetic but varied pictures (gradients, shapes, textures), every fifth an edited copy
    of an earlier one, so that the demo has duplicates to find."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    made: list[Image.Image] = []
    for index in range(count):
        if index % 5 == 4 and made:
            original = made[int(rng.integers(len(made)))]
            width, height = original.size
            image = original.resize((width * 3 // 4, height * 3 // 4)).filter(ImageFilter.GaussianBlur(0.6))
            name = f"generated-{index:03d}-edited-copy.jpg"
        else:
            width, height = int(rng.integers(240, 321)), int(rng.integers(180, 241))
            low, high = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            ramp = np.linspace(0.0, 1.0, width)[None, :, None] * np.ones((height, 1, 1))
            if rng.random() < 0.5:
                ramp = np.linspace(0.0, 1.0, height)[:, None, None] * np.ones((1, width, 1))
            pixels = low + (high - low) * ramp + rng.normal(0, 6, (height, width, 3))
            image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
            draw = ImageDraw.Draw(image)
            for _ in range(int(rng.integers(2, 7))):
                x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
                x1, y1 = x0 + int(rng.integers(20, width // 2)), y0 + int(rng.integers(20, height // 2))
                colour = tuple(int(c) for c in rng.integers(0, 256, 3))
                shape = rng.integers(3)
                if shape == 0:
                    draw.ellipse((x0, y0, x1, y1), fill=colour)
                elif shape == 1:
                    draw.rectangle((x0, y0, x1, y1), fill=colour)
                else:
                    draw.polygon([(x0, y1), ((x0 + x1) // 2, y0), (x1, y1)], fill=colour)
            made.append(image)
            name = f"generated-{index:03d}.jpg"
        out = io.BytesIO()
        image.save(out, "JPEG", quality=88)
        yield name, out.getvalue(), "image/jpeg"

"""The search page as a person uses it: real Chromium, real twin, real photos and their edits."""

from __future__ import annotations

import base64
import email.parser
import email.policy
import io
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import numpy as np
import pytest
import requests
from PIL import Image
from playwright.sync_api import FilePayload, Locator, Page, Request, Route, expect

from lookalike.devserver import generated_pictures
from tests.browser.conftest import OWNER, screenshot
from tests.conftest import jpeg

pytestmark = pytest.mark.browser

GOLDFINCH = "n01531178_goldfinch.JPEG"
THUMBNAIL_SIZE = 256


def key_of(name: str) -> str:
    """The gallery key `lookalike serve --sample-gallery` gives a photo of that name."""
    return f"users/{OWNER}/samples/{name}"


def letterboxed(path: Path, bar: float = 0.15) -> bytes:
    """The photo with black bars `bar` of its height above and below, as a JPEG."""
    with Image.open(path) as photo:
        width, height = photo.size
        bars = round(height * bar)
        canvas = Image.new("RGB", (width, height + 2 * bars))
        canvas.paste(photo.convert("RGB"), (0, bars))
    return jpeg(canvas)


def a_file(name: str, data: bytes, mime_type: str = "image/jpeg") -> FilePayload:
    return {"name": name, "mimeType": mime_type, "buffer": data}


def sent_json(request: Request) -> dict[str, Any]:
    """The JSON body the page sent."""
    body = request.post_data_json
    assert isinstance(body, dict), f"{request.url} carried no JSON object"
    return body


def drop_file(page: Page, name: str, data: bytes, mime_type: str = "image/jpeg") -> None:
    """Drop a file on the drop zone as a person drags one from their desktop."""
    transfer = page.evaluate_handle(
        """([encoded, name, type]) => {
            const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type }));
            return transfer;
        }""",
        [base64.b64encode(data).decode(), name, mime_type],
    )
    for kind in ("dragenter", "dragover", "drop"):
        page.dispatch_event("#dropzone", kind, {"dataTransfer": transfer})


def search_with_file(page: Page, name: str, data: bytes, mime_type: str = "image/jpeg") -> None:
    with page.expect_response(lambda r: urlsplit(r.url).path == "/search"):
        page.set_input_files("#file-input", files=[a_file(name, data, mime_type)])


def hit(page: Page, tier: str, key: str) -> Locator:
    return page.locator(f'#tier-{tier} .hit[data-key="{key}"]')


def keys_in(locator: Locator) -> list[str]:
    keys: list[str] = locator.evaluate_all("cards => cards.map((card) => card.dataset.key)")
    return keys


def wait_until_loaded(image: Locator) -> dict[str, Any]:
    """Wait until the <img> has decoded a picture; its natural size and source."""
    handle = image.element_handle()
    image.page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=handle)
    size: dict[str, Any] = handle.evaluate(
        "img => ({width: img.naturalWidth, height: img.naturalHeight, src: img.src})"
    )
    return size


def query_of(url: str) -> dict[str, str]:
    return {name: values[-1] for name, values in parse_qs(urlsplit(url).query).items()}


def test_the_empty_page_invites_a_search_and_shows_the_gallery(page: Page, gallery_photos: list[Path]) -> None:
    tiles = page.locator("#gallery-grid .tile")

    expect(page.locator("#dropzone")).to_contain_text("Drop an image, paste it, or choose a file")
    expect(tiles.first.locator("img")).to_be_visible()
    assert set(keys_in(tiles)) >= {key_of(p.name) for p in gallery_photos}
    for tile in tiles.all()[:4]:
        loaded = wait_until_loaded(tile.locator("img"))
        assert 0 < max(loaded["width"], loaded["height"]) <= THUMBNAIL_SIZE  # the API's thumbnail, not the original
        assert "/thumbnails/" in loaded["src"] and f"size={THUMBNAIL_SIZE}" in loaded["src"]
    assert page.locator("#results").is_hidden()
    screenshot(page, "01-empty-page")
    screenshot(page.locator("#gallery"), "05-gallery")


def test_a_letterboxed_copy_dropped_on_the_page_finds_its_original_as_a_near_duplicate(
    page: Page, gallery_photos: list[Path]
) -> None:
    original = next(p for p in gallery_photos if p.name == GOLDFINCH)

    with page.expect_response(lambda r: urlsplit(r.url).path == "/search") as answer:
        drop_file(page, "goldfinch with black bars.jpg", letterboxed(original))

    assert answer.value.status == 200
    card = hit(page, "duplicates", key_of(GOLDFINCH))
    expect(card).to_be_visible()
    expect(card).to_contain_text(GOLDFINCH)
    expect(card).to_contain_text(re.compile(r"Hamming distance \d+ · \d+/16 segments"))
    expect(card).to_contain_text("borders trimmed")
    thumbnail = wait_until_loaded(card.locator("img"))
    assert 0 < thumbnail["width"] <= THUMBNAIL_SIZE
    query = wait_until_loaded(page.locator("#query-image"))
    assert query["src"].startswith("blob:") and query["width"] > 0  # what was dropped, shown locally
    expect(page.locator("#query-facts")).to_contain_text("black borders trimmed")
    expect(page.locator("#status")).to_have_text(re.compile(r"^1 duplicate, \d+ similar images?"))
    assert key_of(GOLDFINCH) not in keys_in(page.locator("#tier-similar .hit"))
    screenshot(page, "02-results-with-duplicates")


def test_an_image_pasted_from_the_clipboard_is_searched(page: Page, gallery_photos: list[Path]) -> None:
    robin = next(p for p in gallery_photos if p.name == "n01558993_robin.JPEG")

    with page.expect_response(lambda r: urlsplit(r.url).path == "/search"):
        page.evaluate(
            """([encoded, name]) => {
                const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
                const clipboard = new DataTransfer();
                clipboard.items.add(new File([bytes], name, { type: "image/jpeg" }));
                document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: clipboard, bubbles: true }));
            }""",
            [base64.b64encode(robin.read_bytes()).decode(), "image.jpg"],
        )

    expect(hit(page, "exact", key_of(robin.name))).to_contain_text("identical bytes (SHA-256)")
    expect(page.locator("#status")).to_have_text(re.compile(r"^1 exact copy"))


def test_a_file_that_is_not_an_image_is_rejected_in_words(page: Page) -> None:
    search_with_file(page, "notes.txt", b"shopping list: milk, eggs, flour\n", "text/plain")

    alert = page.locator("#alert")
    expect(alert).to_be_visible()
    expect(alert).to_contain_text("This file is not an image we can read (not_an_image)")
    expect(page.locator("#results")).to_be_hidden()
    screenshot(page, "03-rejected-file")


def test_the_thresholds_live_in_the_url_and_a_reload_reruns_the_search(page: Page) -> None:
    robin = key_of("n01558993_robin.JPEG")
    with page.expect_response(lambda r: urlsplit(r.url).path == "/search"):
        page.goto(f"/?key={robin}")
    expect(page.locator("#results")).to_be_visible()

    with page.expect_response(lambda r: urlsplit(r.url).path == "/search") as rerun:
        page.locator("#duplicate_distance").fill("3")
    with page.expect_response(lambda r: urlsplit(r.url).path == "/search"):
        page.locator("#min_similarity").fill("0.3")

    assert sent_json(rerun.value.request)["duplicate_distance"] == 3
    assert query_of(page.url) == {"key": robin, "duplicate_distance": "3", "min_similarity": "0.3"}
    with page.expect_request(lambda r: urlsplit(r.url).path == "/search") as after_reload:
        page.reload()
    assert sent_json(after_reload.value) == {"key": robin, "duplicate_distance": 3, "min_similarity": 0.3, "page": 1}
    expect(page.locator("#duplicate_distance")).to_have_value("3")
    expect(page.locator("#duplicate_distance-value")).to_have_text("3 bits")
    expect(page.locator("#min_similarity-value")).to_have_text("0.30")
    expect(page.locator("#query-name")).to_have_text("n01558993_robin.JPEG")
    expect(page.locator("#tier-similar .hit").first).to_be_visible()


def test_next_pages_through_the_similar_images(page: Page) -> None:
    jay = key_of("n01580077_jay.JPEG")
    page.goto(f"/?key={jay}&min_similarity=0&page_size=4")
    similar = page.locator("#tier-similar .hit")
    expect(similar).to_have_count(4)
    first_page = keys_in(similar)
    expect(page.locator("#page-previous")).to_be_disabled()

    with page.expect_response(lambda r: urlsplit(r.url).path == "/search"):
        page.locator("#page-next").click()

    expect(page.locator("#page-label")).to_have_text("Page 2")
    expect(similar.first).to_be_visible()
    second_page = keys_in(similar)
    assert second_page and not set(second_page) & set(first_page)
    assert query_of(page.url)["page"] == "2"
    expect(page.locator("#page-previous")).to_be_enabled()
    page.go_back()
    expect(page.locator("#page-label")).to_have_text("Page 1")


def test_clicking_a_gallery_picture_searches_by_its_key(page: Page) -> None:
    robin = key_of("n01558993_robin.JPEG")

    with page.expect_request(lambda r: urlsplit(r.url).path == "/search") as searched:
        page.locator(f'#gallery-grid .tile-link[data-key="{robin}"]').click()

    assert sent_json(searched.value)["key"] == robin
    expect(page.locator("#query-name")).to_have_text("n01558993_robin.JPEG")
    expect(page.locator("#tier-similar .hit").first).to_be_visible()
    assert robin not in keys_in(page.locator(".hits .hit"))  # an image does not find itself
    assert query_of(page.url)["key"] == robin
    assert wait_until_loaded(page.locator("#query-image"))["width"] > 0


def test_load_more_pages_through_the_gallery(page: Page) -> None:
    def five_a_page(route: Route) -> None:
        parts = urlsplit(route.request.url)
        query = {name: values[-1] for name, values in parse_qs(parts.query).items()} | {"page_size": "5"}
        route.continue_(url=parts._replace(query=urlencode(query)).geturl())

    page.route(re.compile(r"/images\?"), five_a_page)
    page.reload()
    tiles = page.locator("#gallery-grid .tile")
    expect(tiles).to_have_count(5)
    first = keys_in(tiles)

    page.get_by_role("button", name="Load more").click()

    expect(tiles).to_have_count(10)
    assert keys_in(tiles)[:5] == first and len(set(keys_in(tiles))) == 10


def test_delete_removes_an_image_from_the_gallery(page: Page, server: str, photos: list[Path]) -> None:
    presigned = requests.post(f"{server}/uploads", json={"content_type": "image/jpeg", "filename": "x.jpg"}, timeout=30)
    key = presigned.json()["key"]
    stored = requests.put(
        presigned.json()["url"], data=photos[40].read_bytes(), headers=presigned.json()["headers"], timeout=60
    )
    stored.raise_for_status()
    page.reload()
    tile = page.locator(f'#gallery-grid .tile[data-key="{key}"]')
    expect(tile).to_be_visible()

    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_response(lambda r: r.request.method == "DELETE") as deleted:
        tile.get_by_role("button", name="Delete x.jpg").click()

    assert deleted.value.status == 202
    expect(tile).to_have_count(0)
    expect(page.locator("#status")).to_have_text("Deleted x.jpg")
    listed = [image["key"] for image in requests.get(f"{server}/images", timeout=30).json()["images"]]
    assert key not in listed
    assert requests.get(f"{server}/images/{key}", timeout=30).status_code == 404


def test_an_image_added_to_the_gallery_shows_indexing_then_becomes_searchable(page: Page, photos: list[Path]) -> None:
    data = jpeg(Image.open(photos[60]))
    polls_to_miss = [1, 2]

    def not_yet_indexed(route: Route) -> None:
        # The twin indexes before its PUT returns; the cloud takes seconds. Answer the first
        # polls as the cloud would, to see the state a person sees there.
        if route.request.method == "GET" and polls_to_miss:
            polls_to_miss.pop()
            route.fulfill(status=404, json={"error": {"code": "not_found", "message": "no image"}})
        else:
            route.continue_()

    page.route("**/images/users/local/uploads/**", not_yet_indexed)
    page.set_input_files("#upload-input", files=[a_file("harbour at dusk.jpg", data)])

    pending = page.locator("#gallery-grid .tile.pending")
    expect(pending.locator(".tile-state")).to_have_text("indexing…")
    screenshot(page.locator("#gallery"), "05-gallery-indexing")
    added = page.locator('#gallery-grid .tile-link[data-key^="users/local/uploads/"]', has_text="harbour at dusk.jpg")
    expect(added).to_be_visible()
    expect(page.locator("#status")).to_have_text("harbour at dusk.jpg is indexed and searchable")
    key = added.get_attribute("data-key")
    assert key is not None and key.endswith("/harbour at dusk.jpg")
    search_with_file(page, "the same bytes.jpg", data)
    expect(hit(page, "exact", key)).to_be_visible()
    expect(hit(page, "exact", key)).to_contain_text("identical bytes")


def test_a_cloud_presigned_post_sends_the_signed_fields_then_the_file(
    page: Page, server: str, photos: list[Path]
) -> None:
    data = jpeg(Image.open(photos[70]))
    local: dict[str, Any] = {}
    received: dict[str, Any] = {}
    fields = {"key": "", "Content-Type": "image/jpeg", "policy": "eyJjb25kaXRpb25zIjogW119", "x-amz-signature": "0f"}

    def presign_as_s3(route: Route) -> None:
        # The twin's own presign, reshaped as S3's presigned POST to a stand-in bucket URL.
        local.update(route.fetch().json())
        fields["key"] = local["key"]
        answer = {"key": local["key"], "expires_in": 900, "method": "POST", "url": f"{server}/bucket", "fields": fields}
        route.fulfill(json=answer)

    def bucket(route: Route) -> None:
        request = route.request
        head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
        form = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + (request.post_data_buffer or b""))
        parts = [(part.get_param("name", header="content-disposition"), part) for part in form.iter_parts()]
        received["names"] = [name for name, _ in parts]
        received["authorization"] = request.headers.get("authorization")
        received["file"] = parts[-1][1].get_payload(decode=True)
        received["fields"] = {name: part.get_content() for name, part in parts[:-1]}
        # Store the object as S3 would; the twin then delivers its upload event.
        requests.put(local["url"], data=received["file"], headers=local["headers"], timeout=60).raise_for_status()
        route.fulfill(status=204)

    page.route("**/uploads", presign_as_s3)
    page.route(f"{server}/bucket", bucket)
    page.set_input_files("#upload-input", files=[a_file("from the cloud.jpg", data)])

    added = page.locator("#gallery-grid .tile-link", has_text="from the cloud.jpg")
    expect(added).to_be_visible()
    assert received["names"] == [*fields, "file"]  # S3 reads no field after the file
    assert received["fields"] == fields
    assert received["file"] == data
    assert received["authorization"] is None  # the form is signed: no token travels to the bucket
    assert added.get_attribute("data-key") == local["key"]


def test_an_oversized_image_is_offered_the_upload_path_instead(page: Page) -> None:
    noise = np.random.default_rng(3).integers(0, 256, (1100, 1500, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, "PNG")
    data = out.getvalue()
    assert len(data) > 4.5 * 2**20
    searches: list[str] = []
    page.on("request", lambda r: searches.append(r.url) if urlsplit(r.url).path == "/search" else None)

    page.set_input_files("#file-input", files=[a_file("huge scan.png", data, "image/png")])

    alert = page.locator("#alert")
    expect(alert).to_contain_text("This image is too large to search directly")
    assert searches == []  # refused before sending
    with page.expect_response(lambda r: urlsplit(r.url).path == "/search") as searched:
        alert.get_by_role("button", name="Add to gallery and search").click()
    assert searched.value.status == 200
    assert sent_json(searched.value.request)["key"].endswith("/huge scan.png")
    expect(page.locator("#results")).to_be_visible()
    expect(page.locator("#query-name")).to_have_text("huge scan.png")


def test_a_store_that_is_down_says_so_and_offers_a_retry(page: Page, gallery_photos: list[Path]) -> None:
    down = {"error": {"code": "store_unavailable", "message": "the vector index did not answer"}}
    search_route = re.compile(r"/search(\?.*)?$")
    page.route(search_route, lambda route: route.fulfill(status=503, json=down))

    search_with_file(page, "photo.jpg", gallery_photos[0].read_bytes())

    expect(page.locator("#alert")).to_contain_text("The search service is unavailable, try again")
    page.unroute(search_route)
    with page.expect_response(lambda r: urlsplit(r.url).path == "/search") as retried:
        page.locator("#alert").get_by_role("button", name="Try again").click()
    assert retried.value.status == 200
    expect(page.locator("#alert")).to_be_hidden()
    expect(page.locator("#tier-exact .hit")).to_have_count(1)


def test_a_401_asks_for_a_token_then_sends_it_on_data_calls_and_thumbnails(page: Page) -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJsb2NhbCJ9.c2lnbmF0dXJl"
    seen: list[tuple[str, str | None]] = []

    def authorizer(route: Route) -> None:
        # Stands in for API Gateway's JWT authorizer in front of the twin.
        path = urlsplit(route.request.url).path
        if not path.startswith(("/images", "/search", "/thumbnails", "/uploads")):
            route.continue_()
            return
        seen.append((path, route.request.headers.get("authorization")))
        if route.request.headers.get("authorization") != f"Bearer {token}":
            route.fulfill(status=401, json={"error": {"code": "unauthorized", "message": "no token"}})
        else:
            route.continue_()

    page.context.route("**/*", authorizer)
    page.reload()

    expect(page.locator("#auth")).to_be_visible()
    expect(page.locator("#alert")).to_contain_text("Sign-in needed")
    expect(page.locator("#token-input")).to_be_focused()
    screenshot(page, "07-access-token", full_page=False)
    page.locator("#token-input").fill(token)
    page.locator("#token-input").press("Enter")

    first = page.locator("#gallery-grid .tile img").first
    expect(first).to_be_visible()
    loaded = wait_until_loaded(first)
    assert loaded["src"].startswith("blob:") and loaded["width"] > 0  # fetched with the header
    assert page.evaluate("sessionStorage.getItem('lookalike.token')") == token
    thumbnails = [auth for path, auth in seen if path.startswith("/thumbnails/")]
    assert thumbnails and set(thumbnails) == {f"Bearer {token}"}
    expect(page.locator("#auth")).to_be_hidden()


def test_a_phone_sized_screen_has_two_columns_and_no_sideways_scroll(page: Page, gallery_photos: list[Path]) -> None:
    original = next(p for p in gallery_photos if p.name == GOLDFINCH)
    page.set_viewport_size({"width": 375, "height": 800})

    search_with_file(page, "goldfinch with black bars.jpg", letterboxed(original))

    expect(hit(page, "duplicates", key_of(GOLDFINCH))).to_be_visible()
    widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1]
    for grid in ("#tier-similar .hits", "#gallery-grid"):
        columns = page.locator(grid).evaluate("grid => getComputedStyle(grid).gridTemplateColumns.split(' ').length")
        assert columns == 2
    dropzone, thresholds = (page.locator(s).bounding_box() for s in ("#dropzone", "#thresholds"))
    assert dropzone and thresholds and thresholds["y"] >= dropzone["y"] + dropzone["height"]  # stacked
    screenshot(page, "04-phone-top", full_page=False)
    page.locator("#results").evaluate("results => results.scrollIntoView()")
    screenshot(page, "04-phone-results", full_page=False)


def test_a_picture_like_nothing_in_the_gallery_says_so(page: Page) -> None:
    page.goto("/?duplicate_distance=0&duplicate_similarity=0.99&min_similarity=0.99")
    _, shapes, _ = next(generated_pictures(1))

    search_with_file(page, "shapes on a gradient.jpg", shapes)

    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#empty")).to_contain_text("No copies or lookalikes found")
    expect(page.locator("#status")).to_have_text("No copies or lookalikes found")
    expect(page.locator(".tier")).to_have_count(3)
    assert all(tier.is_hidden() for tier in page.locator(".tier").all())
    screenshot(page, "06-no-results")


def test_tab_reaches_the_drop_zone_and_enter_opens_the_file_picker(page: Page) -> None:
    # Listening early makes Playwright intercept the picker before any key is pressed.
    page.on("filechooser", lambda chooser: None)
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "dropzone":
            break
    assert page.evaluate("document.activeElement.id") == "dropzone"
    outline = page.locator("#dropzone").evaluate("zone => getComputedStyle(zone).outlineStyle")
    assert outline == "solid"  # a visible focus ring

    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")

    assert not chooser.value.is_multiple()
    assert chooser.value.element.get_attribute("id") == "file-input"

// The search page: drop, paste or pick an image (or click one in the gallery) and see its
// exact copies, near-duplicates and similar images, each explaining why it is there.
//
// A search by key lives in the URL (?key=..&duplicate_distance=..&min_similarity=..&page=..)
// so that it can be shared; loading such a URL reruns it. A search by a dropped file cannot
// travel in a URL: only its thresholds do.

import * as api from "./api.js";

const $ = (id) => document.getElementById(id);

/** The thresholds the user can move. Until the first answer the defaults are the API's
 * documented ones (lookalike.thresholds); every answer then says which it used. */
const THRESHOLDS = {
  duplicate_distance: { fallback: 8, parse: (text) => Number.parseInt(text, 10), show: (v) => `${v} bits` },
  duplicate_similarity: { fallback: 0.77, parse: Number.parseFloat, show: (v) => v.toFixed(2) },
  min_similarity: { fallback: 0.5, parse: Number.parseFloat, show: (v) => v.toFixed(2) },
};
/** pHash segments (lookalike.hashing.DEFAULT_LAYOUT: 16 segments of 4 bits). */
const SEGMENTS = 16;
const GALLERY_PAGE_SIZE = 24;
const INDEXING_POLL_MS = 1000;
const INDEXING_TIMEOUT_MS = 120_000;
const SIGNAL_NAMES = { sha256: "SHA-256", phash: "pHash", vector: "vector" };
const REJECTIONS = {
  not_an_image: "This file is not an image we can read",
  unsupported_format: "This image format is not supported",
  empty: "This file is empty",
  truncated: "This image is cut short: the file looks truncated",
  corrupt: "This image is damaged and cannot be decoded",
  too_small: "This image is too small to compare",
  too_many_pixels: "This image has too many pixels to process",
  too_large: "This image is too large to search directly",
};

const state = {
  query: null, // {kind: "key", key} or {kind: "file", file, preview}
  page: 1,
  pageSize: null, // only when the URL sets it
  overrides: {}, // the thresholds the user chose; the rest are the API's defaults
  defaults: Object.fromEntries(Object.entries(THRESHOLDS).map(([name, t]) => [name, t.fallback])),
  controller: null,
  galleryNext: null,
  rerunTimer: 0,
};

// --- Small helpers -------------------------------------------------------------------------

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function icon(pathData) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  for (const d of pathData) {
    const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
    path.setAttribute("d", d);
    svg.append(path);
  }
  return svg;
}

const TRASH = ["M4 7h16", "M10 11v6M14 11v6", "M6 7l1 12a2 2 0 0 0 2 2h6a2 2 0 0 0 2-2l1-12", "M9 7V4h6v3"];

function plural(count, one, many) {
  return `${count} ${count === 1 ? one : many}`;
}

/** Text that may wrap after "_", "-", "." and "/" (file names have no spaces to wrap at). */
function breakable(text) {
  const fragment = document.createDocumentFragment();
  for (const piece of text.split(/(?<=[_\-./])/)) fragment.append(piece, document.createElement("wbr"));
  fragment.lastChild?.remove();
  return fragment;
}

function fileName(key) {
  return key.slice(key.lastIndexOf("/") + 1);
}

function folderOf(key) {
  return key.includes("/") ? key.slice(0, key.lastIndexOf("/") + 1) : "";
}

function megabytes(bytes) {
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function size(bytes) {
  return bytes < 1024 * 1024 ? `${Math.max(1, Math.round(bytes / 1024))} KB` : megabytes(bytes);
}

/** Say something to screen readers (the live region is polite: it waits its turn). */
function announce(message) {
  $("status").textContent = message;
}

function searchHref(key) {
  const params = new URLSearchParams({ key });
  for (const [name, value] of Object.entries(state.overrides)) params.set(name, value);
  return `?${params}`;
}

/** Show an API thumbnail in `img`: plain URL without a token, fetched blob with one. */
function showThumbnail(img, url, pixels = 256) {
  const frame = img.parentElement;
  frame.classList.add("loading");
  img.addEventListener("load", () => frame.classList.remove("loading", "broken"), { once: true });
  img.addEventListener("error", () => frame.classList.replace("loading", "broken"), { once: true });
  api.thumbnailSource(url, pixels).then(
    (source) => {
      img.src = source;
    },
    () => frame.classList.replace("loading", "broken"),
  );
}

// --- Alerts --------------------------------------------------------------------------------

function showAlert({ title, detail = "", actions = [], tone = "error" }) {
  const box = $("alert");
  box.dataset.tone = tone;
  $("alert-title").textContent = title;
  $("alert-detail").textContent = detail;
  $("alert-detail").hidden = !detail;
  $("alert-actions").replaceChildren(
    ...actions.map(({ label, run, primary }) => {
      const button = element("button", { type: "button", class: `button ${primary ? "primary" : ""}`, text: label });
      button.addEventListener("click", run);
      return button;
    }),
  );
  box.hidden = false;
}

function hideAlert() {
  $("alert").hidden = true;
}

/** An error in words, with what the person can do about it. */
function explainError(error, { retry, file } = {}) {
  if (error.status === 401) {
    openTokenPanel("This service needs an access token: paste yours below, then try again.");
    return { title: "Sign-in needed", detail: "Paste an access token to continue.", tone: "info" };
  }
  if (error.status === 503) {
    return {
      title: "The search service is unavailable, try again",
      detail: "One of its stores did not answer. This is usually brief.",
      actions: retry ? [{ label: "Try again", run: retry, primary: true }] : [],
    };
  }
  if (error.status === 0) {
    return {
      title: "The search service could not be reached",
      detail: "Check the connection, then try again.",
      actions: retry ? [{ label: "Try again", run: retry, primary: true }] : [],
    };
  }
  const reason = error.reason ?? (error.status === 413 ? "too_large" : null);
  if (reason) {
    const words = REJECTIONS[reason] ?? "This image was rejected";
    const tooLarge = reason === "too_large" && file;
    return {
      title: `${words} (${reason})`,
      detail: [file?.name, tooLarge ? `${error.message}. Add it to your gallery instead.` : capitalise(error.message)]
        .filter(Boolean)
        .join(": "),
      actions: tooLarge
        ? [{ label: "Add to gallery and search", run: () => addToGallery([file], true), primary: true }]
        : [{ label: "Choose another image", run: () => $("file-input").click() }],
    };
  }
  if (error.status === 404) {
    return { title: "That image is not in your gallery", detail: "It may have been deleted, or the link is wrong." };
  }
  if (error.status === 400) {
    return { title: "The search could not run with these settings", detail: capitalise(error.message) };
  }
  if (error.status === 403) {
    return { title: "The token does not allow this", detail: capitalise(error.message) };
  }
  return { title: "Something went wrong", detail: capitalise(error.message ?? String(error)) };
}

function capitalise(text) {
  return text ? text[0].toUpperCase() + text.slice(1) : "";
}

function reportError(error, context) {
  console.warn(error);
  const explained = explainError(error, context);
  showAlert(explained);
  announce(explained.title);
}

// --- Thresholds and the URL ----------------------------------------------------------------

function thresholdValue(name) {
  return state.overrides[name] ?? state.defaults[name];
}

function renderThresholds() {
  for (const [name, threshold] of Object.entries(THRESHOLDS)) {
    const value = thresholdValue(name);
    $(name).value = value;
    $(`${name}-value`).textContent = threshold.show(value);
    $(name).closest(".control").classList.toggle("changed", name in state.overrides);
  }
}

function onThresholdInput(event) {
  const name = event.target.name;
  const value = THRESHOLDS[name].parse(event.target.value);
  state.overrides[name] = value;
  // The API refuses a minimum above the duplicate similarity: move the other one along.
  const similar = thresholdValue("min_similarity");
  const duplicate = thresholdValue("duplicate_similarity");
  if (similar > duplicate) {
    if (name === "min_similarity") state.overrides.duplicate_similarity = similar;
    else state.overrides.min_similarity = duplicate;
  }
  renderThresholds();
  state.page = 1;
  writeUrl();
  clearTimeout(state.rerunTimer);
  if (state.query) state.rerunTimer = setTimeout(runSearch, 350);
}

function readUrl() {
  const params = new URLSearchParams(location.search);
  state.overrides = {};
  for (const [name, threshold] of Object.entries(THRESHOLDS)) {
    const value = threshold.parse(params.get(name) ?? "");
    if (Number.isFinite(value)) state.overrides[name] = value;
  }
  const page = Number.parseInt(params.get("page") ?? "", 10);
  state.page = page >= 1 ? page : 1;
  const pageSize = Number.parseInt(params.get("page_size") ?? "", 10);
  state.pageSize = pageSize >= 1 ? pageSize : null;
  return params.get("key");
}

function writeUrl({ push = false } = {}) {
  const params = new URLSearchParams();
  if (state.query?.kind === "key") params.set("key", state.query.key);
  for (const name of Object.keys(THRESHOLDS)) {
    if (name in state.overrides) params.set(name, state.overrides[name]);
  }
  if (state.page > 1) params.set("page", state.page);
  if (state.pageSize) params.set("page_size", state.pageSize);
  const url = params.size ? `?${params}` : location.pathname;
  if (`${location.search}` === (params.size ? `?${params}` : "")) return;
  history[push ? "pushState" : "replaceState"](null, "", url);
}

// --- Searching -----------------------------------------------------------------------------

function searchFile(file) {
  if (!file) return;
  hideAlert();
  if (file.size > api.MAX_SEARCH_BYTES) {
    const fitsUpload = file.size <= api.MAX_UPLOAD_BYTES;
    showAlert({
      tone: "info",
      title: "This image is too large to search directly",
      detail:
        `It is ${megabytes(file.size)}; a search request carries at most ${megabytes(api.MAX_SEARCH_BYTES)}. ` +
        (fitsUpload
          ? "Add it to your gallery instead: it goes straight to storage, then it is searched by its key."
          : `Images up to ${megabytes(api.MAX_UPLOAD_BYTES)} can be added to the gallery; this one is larger still.`),
      actions: fitsUpload ? [{ label: "Add to gallery and search", run: () => addToGallery([file], true), primary: true }] : [],
    });
    announce("This image is too large to search directly");
    return;
  }
  if (state.query?.kind === "file") URL.revokeObjectURL(state.query.preview);
  state.query = { kind: "file", file, preview: URL.createObjectURL(file) };
  state.page = 1;
  runSearch({ push: true });
}

function searchKey(key, { push = true } = {}) {
  hideAlert();
  if (state.query?.kind === "file") URL.revokeObjectURL(state.query.preview);
  state.query = { kind: "key", key };
  state.page = 1;
  runSearch({ push });
}

async function runSearch({ push = false } = {}) {
  const query = state.query;
  if (!query) return;
  clearTimeout(state.rerunTimer);
  state.controller?.abort();
  const controller = new AbortController();
  state.controller = controller;
  writeUrl({ push });
  const options = { ...state.overrides, page: state.page, page_size: state.pageSize ?? undefined };
  setBusy(true);
  try {
    const result =
      query.kind === "key"
        ? await api.searchKey(query.key, options, controller.signal)
        : await api.searchImage(query.file, options, controller.signal);
    if (controller !== state.controller) return;
    hideAlert();
    renderResults(query, result);
  } catch (error) {
    if (error.name === "AbortError" || controller !== state.controller) return;
    $("results").hidden = true;
    reportError(error, { retry: () => runSearch(), file: query.kind === "file" ? query.file : null });
  } finally {
    if (controller === state.controller) setBusy(false);
  }
}

function setBusy(busy) {
  document.body.classList.toggle("searching", busy);
  $("dropzone").setAttribute("aria-busy", busy);
  document.querySelector(".tiers").setAttribute("aria-busy", busy);
  $("dropzone").querySelector(".dropzone-title").textContent = busy
    ? "Searching…"
    : "Drop an image, paste it, or choose a file";
}

// --- Results -------------------------------------------------------------------------------

function renderResults(query, result) {
  for (const name of Object.keys(THRESHOLDS)) {
    if (result.thresholds?.[name] !== undefined) state.defaults[name] = result.thresholds[name];
  }
  renderThresholds();
  renderQuery(query, result.query);

  const { exact, duplicates, similar } = result;
  const nothing = !exact.length && !duplicates.length && !similar.length && result.page === 1;
  $("empty").hidden = !nothing;
  for (const id of ["tier-exact", "tier-duplicates", "tier-similar"]) $(id).hidden = nothing;
  renderTier("tier-exact", exact, result.query);
  renderTier("tier-duplicates", duplicates, result.query);
  renderTier("tier-similar", similar, result.query, result);

  const warnings = $("warnings");
  warnings.replaceChildren(...(result.warnings ?? []).map((text) => element("li", { text: capitalise(text) })));
  warnings.hidden = !warnings.children.length;

  const summary = nothing ? "No copies or lookalikes found" : summarise(result);
  $("summary").textContent = summary;
  $("summary").hidden = nothing;
  announce(summary);
  $("results").hidden = false;
}

function summarise({ exact, duplicates, similar, page, has_more: hasMore }) {
  const parts = [];
  if (exact.length) parts.push(plural(exact.length, "exact copy", "exact copies"));
  if (duplicates.length) parts.push(plural(duplicates.length, "duplicate", "duplicates"));
  const onPage = page > 1 || hasMore ? ` on page ${page}` : "";
  parts.push(`${plural(similar.length, "similar image", "similar images")}${onPage}`);
  return parts.join(", ");
}

function renderQuery(query, info) {
  const img = $("query-image");
  const figure = img.parentElement;
  figure.classList.remove("broken");
  img.onerror = () => figure.classList.add("broken"); // e.g. HEIC: searchable, not displayable here
  if (query.kind === "file") {
    img.src = query.preview;
    $("query-name").replaceChildren(breakable(query.file.name || "Pasted image"));
  } else {
    img.removeAttribute("src");
    showThumbnail(img, api.thumbnailUrlOf(query.key), 512);
    $("query-name").replaceChildren(breakable(fileName(query.key)));
  }
  const facts = [];
  if (info.width && info.height) facts.push(["Size", `${info.width} × ${info.height} px`]);
  if (query.kind === "file") facts.push(["File", size(query.file.size)]);
  if (query.kind === "key") facts.push(["Key", query.key]);
  if (info.trim && info.trim !== "none") facts.push(["Borders", `${info.trim} borders trimmed before hashing`]);
  if (info.phash) facts.push(["pHash", info.phash]);
  $("query-facts").replaceChildren(
    ...facts.flatMap(([term, value]) => [element("dt", { text: term }), element("dd", {}, breakable(value))]),
  );
}

function renderTier(id, hits, queryInfo, paging = null) {
  const section = $(id);
  section.querySelector(".count").textContent = hits.length ? `(${hits.length}${paging?.has_more ? "+" : ""})` : "";
  const list = section.querySelector(".hits");
  list.replaceChildren(...hits.map((hit) => hitCard(hit, queryInfo)));
  section.classList.toggle("is-empty", !hits.length && !(paging && paging.page > 1));
  if (paging) {
    const pager = section.querySelector(".pager");
    pager.hidden = paging.page === 1 && !paging.has_more;
    $("page-previous").disabled = paging.page <= 1;
    $("page-next").disabled = !paging.has_more;
    $("page-label").textContent = `Page ${paging.page}`;
  }
}

function hitCard(hit, queryInfo) {
  const img = element("img", { alt: fileName(hit.key), loading: "lazy", width: 256, height: 256 });
  const link = element(
    "a",
    { class: "hit-link", href: searchHref(hit.key), title: `Search with ${hit.key}`, "data-key": hit.key },
    element("span", { class: "thumb" }, img),
  );
  showThumbnail(img, hit.thumbnail_url);
  const card = element(
    "li",
    { class: `hit ${hit.tier}`, "data-key": hit.key },
    link,
    element(
      "div",
      { class: "hit-body" },
      element("p", { class: "hit-name", title: hit.key }, breakable(fileName(hit.key))),
      element("p", { class: "hit-path", text: folderOf(hit.key) }),
      ...explain(hit, queryInfo).map((line) => element("p", { class: "why", text: line })),
      similarityMeter(hit.similarity),
    ),
  );
  return card;
}

/** Why a hit is in its tier, in words. */
function explain(hit, queryInfo) {
  const lines = [];
  if (hit.tier === "exact") lines.push("identical bytes (SHA-256)");
  if (hit.tier !== "similar" && hit.distance !== null && hit.distance !== undefined) {
    const segments = hit.segments_matched !== null ? ` · ${hit.segments_matched}/${SEGMENTS} segments` : "";
    lines.push(`Hamming distance ${hit.distance}${segments}`);
  }
  if (hit.similarity !== null && hit.similarity !== undefined) lines.push(`similarity ${similarity(hit.similarity)}`);
  const signals = (hit.signals ?? []).map((name) => SIGNAL_NAMES[name] ?? name);
  if (hit.tier !== "similar" && signals.length) lines.push(`signals: ${signals.join(" + ")}`);
  const trimmed = [hit.trim, queryInfo?.trim].some((trim) => trim && trim !== "none");
  if (trimmed && hit.tier !== "similar") lines.push("borders trimmed");
  return lines;
}

/** Two decimals, three near 1 (0.999 is not 1.00: the bytes differ). */
function similarity(value) {
  return value > 0.99 && value < 1 ? value.toFixed(3) : value.toFixed(2);
}

function similarityMeter(similarity) {
  if (similarity === null || similarity === undefined) return null;
  const bar = element("span", { class: "meter-bar" });
  bar.style.width = `${Math.max(0, Math.min(1, similarity)) * 100}%`;
  return element("span", { class: "meter", "aria-hidden": "true" }, bar);
}

// --- The gallery ---------------------------------------------------------------------------

async function loadGallery({ reset = false } = {}) {
  const more = $("gallery-more");
  if (reset) state.galleryNext = null;
  more.disabled = true;
  try {
    const page = await api.listImages({ next: state.galleryNext, pageSize: GALLERY_PAGE_SIZE });
    const tiles = page.images.map(galleryTile);
    if (reset) $("gallery-grid").replaceChildren(...tiles);
    else $("gallery-grid").append(...tiles);
    state.galleryNext = page.next_token;
    more.hidden = !page.has_more;
    $("gallery-empty").hidden = $("gallery-grid").children.length > 0;
  } catch (error) {
    reportError(error, { retry: () => loadGallery({ reset }) });
  } finally {
    more.disabled = false;
  }
}

function galleryTile(image) {
  const name = fileName(image.key);
  const img = element("img", { alt: "", loading: "lazy", width: 256, height: 256 });
  const link = element(
    "a",
    { class: "tile-link", href: searchHref(image.key), "data-key": image.key, title: image.key },
    element("span", { class: "thumb" }, img),
    element("span", { class: "tile-name", text: name }),
    element("span", { class: "visually-hidden", text: ": search with this image" }),
  );
  showThumbnail(img, image.thumbnail_url);
  const remove = element("button", { class: "tile-delete", type: "button", "aria-label": `Delete ${name}`, title: "Delete" });
  remove.append(icon(TRASH));
  remove.addEventListener("click", () => deleteFromGallery(image.key));
  const tile = element("li", { class: "tile", "data-key": image.key }, link, remove);
  if (!image.indexed) tile.append(element("span", { class: "tile-state", text: "not indexed" }));
  return tile;
}

async function deleteFromGallery(key) {
  const name = fileName(key);
  if (!window.confirm(`Delete ${name}? It leaves your gallery and the search index.`)) return;
  const tile = document.querySelector(`#gallery-grid .tile[data-key="${CSS.escape(key)}"]`);
  tile?.classList.add("deleting");
  try {
    await api.deleteImage(key);
  } catch (error) {
    tile?.classList.remove("deleting");
    reportError(error, {});
    return;
  }
  tile?.remove();
  for (const card of document.querySelectorAll(`.hits .hit[data-key="${CSS.escape(key)}"]`)) card.remove();
  announce(`Deleted ${name}`);
  await loadGallery({ reset: true });
}

/** Upload files into the gallery, then wait until each is indexed (and searchable). */
async function addToGallery(files, searchWhenIndexed = false) {
  hideAlert();
  for (const file of files) {
    if (!api.UPLOAD_TYPES.has(file.type)) {
      showAlert({
        title: `${file.name} is not an image the gallery accepts`,
        detail: "Add JPEG, PNG, GIF, WebP, BMP, TIFF, AVIF or HEIC pictures.",
      });
      continue;
    }
    if (file.size > api.MAX_UPLOAD_BYTES) {
      showAlert({ title: `${file.name} is too large`, detail: `The gallery takes images up to ${megabytes(api.MAX_UPLOAD_BYTES)}.` });
      continue;
    }
    const pending = pendingTile(file);
    $("gallery-grid").prepend(pending.tile);
    $("gallery-empty").hidden = true;
    try {
      pending.say("uploading…");
      const key = await api.uploadImage(file);
      pending.tile.dataset.key = key;
      pending.say("indexing…");
      announce(`${file.name} uploaded, indexing`);
      const record = await waitUntilIndexed(key);
      pending.tile.replaceWith(galleryTile({ key, indexed: true, thumbnail_url: record.thumbnail_url }));
      announce(`${file.name} is indexed and searchable`);
      if (searchWhenIndexed) searchKey(key);
    } catch (error) {
      pending.fail();
      reportError(error, {});
    } finally {
      URL.revokeObjectURL(pending.preview);
    }
  }
}

function pendingTile(file) {
  const preview = URL.createObjectURL(file);
  const status = element("span", { class: "tile-state busy" });
  const tile = element(
    "li",
    { class: "tile pending", "aria-busy": "true" },
    element("span", { class: "thumb" }, element("img", { src: preview, alt: "" })),
    element("span", { class: "tile-name", text: file.name }),
    status,
  );
  return {
    tile,
    preview,
    say: (text) => {
      status.textContent = text;
    },
    fail: () => {
      tile.setAttribute("aria-busy", "false");
      status.className = "tile-state failed";
      status.textContent = "not added";
    },
  };
}

async function waitUntilIndexed(key) {
  const deadline = Date.now() + INDEXING_TIMEOUT_MS;
  for (;;) {
    try {
      return await api.getImage(key);
    } catch (error) {
      if (error.status !== 404) throw error;
    }
    if (Date.now() > deadline) {
      throw new Error("the image is still not indexed after two minutes: the indexer may have rejected it");
    }
    await new Promise((resolve) => setTimeout(resolve, INDEXING_POLL_MS));
  }
}

// --- The access token ----------------------------------------------------------------------

function openTokenPanel(why) {
  const panel = $("auth");
  if (why) $("auth-why").textContent = why;
  panel.hidden = false;
  $("token-toggle").setAttribute("aria-expanded", "true");
  $("token-input").focus();
}

function renderTokenButton() {
  const toggle = $("token-toggle");
  toggle.textContent = api.token.get() ? "Token set" : "Access token";
  toggle.classList.toggle("has-token", Boolean(api.token.get()));
}

function tokenChanged() {
  api.releaseThumbnails();
  renderTokenButton();
  $("auth").hidden = true;
  $("token-toggle").setAttribute("aria-expanded", "false");
  hideAlert();
  loadGallery({ reset: true });
  if (state.query) runSearch();
}

// --- Wiring --------------------------------------------------------------------------------

function firstImage(files) {
  const list = [...(files ?? [])];
  return list.find((file) => file.type.startsWith("image/")) ?? list[0];
}

function wireDropping() {
  const zone = $("dropzone");
  const input = $("file-input");
  zone.addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    searchFile(input.files[0]);
    input.value = ""; // choosing the same file again is a new search
  });
  // The whole window accepts a dropped file: missing the zone by a little should not navigate away.
  let depth = 0;
  const carriesFiles = (event) => [...(event.dataTransfer?.types ?? [])].includes("Files");
  window.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event)) return;
    depth += 1;
    document.body.classList.add("dragging");
  });
  window.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) document.body.classList.remove("dragging");
  });
  window.addEventListener("dragover", (event) => {
    if (carriesFiles(event)) event.preventDefault();
  });
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    document.body.classList.remove("dragging");
    searchFile(firstImage(event.dataTransfer?.files));
  });
  document.addEventListener("paste", (event) => {
    const file = firstImage([...(event.clipboardData?.files ?? [])].filter((f) => f.type.startsWith("image/")));
    if (!file) return; // pasted text stays where it was pasted
    event.preventDefault();
    searchFile(file);
  });
}

function wireLinks() {
  // Search-by-key links are real links (shareable, open in a new tab); a plain click stays here.
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-key]");
    if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    searchKey(link.dataset.key);
    $("results").scrollIntoView({ behavior: "smooth", block: "start" });
  });
  window.addEventListener("popstate", () => {
    const key = readUrl();
    renderThresholds();
    if (key) {
      state.query = { kind: "key", key };
      runSearch();
    } else if (state.query?.kind === "key") {
      state.query = null;
      $("results").hidden = true;
    } else if (state.query) {
      runSearch(); // a dropped file stays; only its thresholds or page travel in the history
    }
  });
}

function wireControls() {
  for (const name of Object.keys(THRESHOLDS)) $(name).addEventListener("input", onThresholdInput);
  $("thresholds").addEventListener("submit", (event) => event.preventDefault());
  $("thresholds-reset").addEventListener("click", () => {
    state.overrides = {};
    state.page = 1;
    renderThresholds();
    writeUrl();
    if (state.query) runSearch();
  });
  $("page-previous").addEventListener("click", () => {
    state.page = Math.max(1, state.page - 1);
    runSearch({ push: true });
  });
  $("page-next").addEventListener("click", () => {
    state.page += 1;
    runSearch({ push: true });
  });
  $("gallery-more").addEventListener("click", () => loadGallery());
  $("upload-button").addEventListener("click", () => $("upload-input").click());
  $("upload-input").addEventListener("change", (event) => {
    const files = [...event.target.files];
    event.target.value = "";
    addToGallery(files);
  });
  $("token-toggle").addEventListener("click", () => {
    if ($("auth").hidden) openTokenPanel();
    else {
      $("auth").hidden = true;
      $("token-toggle").setAttribute("aria-expanded", "false");
    }
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token-input").value.trim();
    if (!value) return;
    api.token.set(value);
    $("token-input").value = "";
    tokenChanged();
  });
  $("token-clear").addEventListener("click", () => {
    api.token.clear();
    tokenChanged();
  });
}

function start() {
  wireDropping();
  wireLinks();
  wireControls();
  renderTokenButton();
  const key = readUrl();
  renderThresholds();
  if (key) {
    state.query = { kind: "key", key };
    runSearch();
  }
  loadGallery({ reset: true });
  document.body.dataset.ready = "true"; // for tests: the handlers are in place
}

start();

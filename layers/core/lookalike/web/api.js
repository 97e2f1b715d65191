// The lookalike HTTP API as the page uses it: one fetch wrapper, the bearer token, uploads.
//
// Every path is relative to the API's root, found from this module's own URL (the page's
// files are served from <root>/static/), so the page works under a stage path too.

const API_ROOT = new URL("..", import.meta.url);
const TOKEN_KEY = "lookalike.token";

/** Lambda's 6 MB synchronous payload carries the image base64-encoded (4/3 larger) inside
 * the event: a search body must stay below about 4.5 MB. Larger images go through
 * POST /uploads and are searched by key. */
export const MAX_SEARCH_BYTES = Math.floor((6 * 1024 * 1024 * 3) / 4) - 64 * 1024;
/** The API's default LOOKALIKE_MAX_OBJECT_BYTES; the upload itself enforces the real one. */
export const MAX_UPLOAD_BYTES = 50 * 1024 * 1024;
/** The content types POST /uploads accepts (http_api.UPLOAD_CONTENT_TYPES). */
export const UPLOAD_TYPES = new Set(
  ["jpeg", "png", "gif", "webp", "bmp", "tiff", "avif", "heic", "heif"].map((name) => `image/${name}`),
);

/** An answer that is not 2xx, with the API's `{"error": {code, message, reason, parameter}}`. */
export class ApiError extends Error {
  constructor(status, error = {}) {
    super(error.message || `the service answered HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.code = error.code ?? null;
    this.reason = error.reason ?? null;
    this.parameter = error.parameter ?? null;
  }
}

/** The bearer token, kept for this tab only. */
export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) ?? "",
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value.trim().replace(/^Bearer\s+/i, "")),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

function authorization() {
  const value = token.get();
  return value ? { Authorization: `Bearer ${value}` } : {};
}

/** A key as a path: each segment escaped, the slashes kept (the API's routes are greedy). */
export function keyPath(key) {
  return key.split("/").map(encodeURIComponent).join("/");
}

async function call(method, path, { query = {}, body, headers = {}, signal } = {}) {
  const url = new URL(path, API_ROOT);
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  let response;
  try {
    response = await fetch(url, { method, body, signal, headers: { ...authorization(), ...headers } });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, { code: "network", message: "the search service could not be reached" });
  }
  const isJson = (response.headers.get("content-type") ?? "").includes("json");
  const payload = isJson ? await response.json().catch(() => null) : null;
  // API Gateway answers its own refusals (the JWT authorizer's 401, a body over 10 MB)
  // as {"message": ...}; the function answers {"error": {...}}.
  if (!response.ok) throw new ApiError(response.status, payload?.error ?? { message: payload?.message });
  return payload;
}

function json(value) {
  return { body: JSON.stringify(value), headers: { "Content-Type": "application/json" } };
}

/** Search with the bytes of `file`; `options` are the thresholds and the page. */
export function searchImage(file, options, signal) {
  // Anything but JSON is taken for the image itself: never let a file's own type say JSON.
  const type = file.type.startsWith("image/") ? file.type : "application/octet-stream";
  return call("POST", "search", { query: options, body: file, headers: { "Content-Type": type }, signal });
}

/** Search with an image already in the gallery (the image does not find itself). */
export function searchKey(key, options, signal) {
  return call("POST", "search", { ...json({ key, ...options }), signal });
}

/** One page of the gallery, newest first; `next` is the previous page's `next_token`. */
export function listImages({ next = null, pageSize = 24 } = {}) {
  return call("GET", "images", { query: { order: "newest", page_size: pageSize, continuation_token: next } });
}

export function getImage(key) {
  return call("GET", `images/${keyPath(key)}`);
}

export function deleteImage(key) {
  return call("DELETE", `images/${keyPath(key)}`);
}

/** Put `file` in the gallery: ask for a presigned upload, then send the bytes straight to
 * storage. Returns the new key; the image is searchable once the indexer has seen it. */
export async function uploadImage(file) {
  const presigned = await call("POST", "uploads", json({ content_type: file.type, filename: file.name }));
  let response;
  try {
    response = await sendToStorage(presigned, file);
  } catch {
    throw new ApiError(0, { code: "network", message: "the upload could not reach the storage" });
  }
  if (!response.ok) throw new ApiError(response.status, await storageError(response));
  return presigned.key;
}

function sendToStorage(presigned, file) {
  if (presigned.method === "PUT") {
    // The local twin: a signed URL for one key and content type, answered by the twin itself.
    return fetch(presigned.url, { method: "PUT", headers: presigned.headers ?? {}, body: file });
  }
  // S3: a presigned POST. Its policy (size range, content type) is checked by S3, and S3
  // reads no field after "file", so the signed fields go first. No token: the form is signed.
  const form = new FormData();
  for (const [name, value] of Object.entries(presigned.fields ?? {})) form.append(name, value);
  form.append("file", file, file.name);
  return fetch(presigned.url, { method: "POST", body: form });
}

async function storageError(response) {
  const text = await response.text().catch(() => "");
  try {
    return JSON.parse(text).error ?? {};
  } catch {
    // S3 answers XML: <Error><Code>EntityTooLarge</Code><Message>...</Message></Error>
    const field = (name) => new RegExp(`<${name}>([^<]*)</${name}>`).exec(text)?.[1];
    return { code: field("Code") ?? "upload_failed", message: field("Message") ?? "the storage refused the upload" };
  }
}

/** The thumbnail URL of a key, as the API itself writes them in `thumbnail_url`. */
export function thumbnailUrlOf(key) {
  return new URL(`thumbnails/${keyPath(key)}`, API_ROOT).href;
}

const thumbnailBlobs = new Map();

/** What to put in an <img src> for a thumbnail. Without a token the URL itself (the browser
 * caches it); with one the image must be fetched with the header, and shown from a blob. */
export async function thumbnailSource(thumbnailUrl, size = 256) {
  const url = new URL(thumbnailUrl, API_ROOT.origin);
  url.searchParams.set("size", size);
  const bearer = token.get();
  if (!bearer) return url.href;
  const cacheKey = `${bearer}\n${url.href}`;
  if (!thumbnailBlobs.has(cacheKey)) {
    const loading = fetch(url, { headers: authorization() }).then(async (response) => {
      if (!response.ok) throw new ApiError(response.status);
      return URL.createObjectURL(await response.blob());
    });
    loading.catch(() => thumbnailBlobs.delete(cacheKey)); // a failure is not cached
    thumbnailBlobs.set(cacheKey, loading);
  }
  return thumbnailBlobs.get(cacheKey);
}

/** Forget the fetched thumbnails (after the token changes). */
export function releaseThumbnails() {
  for (const loading of thumbnailBlobs.values()) loading.then(URL.revokeObjectURL, () => {});
  thumbnailBlobs.clear();
}

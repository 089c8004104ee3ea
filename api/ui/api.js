// The JSON API, called with the key the user signed in with. The key lives in this tab's
// sessionStorage only: never a cookie (so no request carries it unless this code adds it), gone
// when the tab closes or on sign-out.

const STORE = "blockprune.key";

export const getKey = () => sessionStorage.getItem(STORE);
export const setKey = (key) => sessionStorage.setItem(STORE, key);
export const clearKey = () => sessionStorage.removeItem(STORE);

// An error answer of the API ({"error": {"code", "message", "field"?}}), or no answer at all.
export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(field ? `${message} (${field})` : message);
    this.status = status;
    this.code = code;
    this.field = field || null;
  }
}

let unauthorized = () => {};

// What to do when a key is refused (401): app.js signs the user out.
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export async function api(path, { method = "GET", body, headers = {} } = {}) {
  const sent = { Accept: "application/json", ...headers };
  const key = getKey();
  if (key) sent.Authorization = `Bearer ${key}`;
  if (body !== undefined) sent["Content-Type"] = "application/json";
  let answer;
  try {
    answer = await fetch(path, {
      method,
      headers: sent,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      redirect: "error",
    });
  } catch (e) {
    throw new ApiError(0, "unreachable", `the server did not answer (${e.message})`);
  }
  let data = null;
  try {
    data = await answer.json();
  } catch {
    data = null; // not JSON: a proxy's error page, say
  }
  if (!answer.ok) {
    const error = (data && data.error) || {};
    const message = error.message || `${answer.status} ${answer.statusText || "error"}`;
    const refused = new ApiError(answer.status, error.code || "http", message, error.field);
    if (answer.status === 401) unauthorized(refused);
    throw refused;
  }
  return data;
}

// A fresh Idempotency-Key: a retried submit of the same form gets the job the first one made.
// crypto.getRandomValues works on plain http too (randomUUID needs a secure context).
export function newIdempotencyKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return "ui-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

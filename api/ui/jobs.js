// #/jobs: the tenant's jobs, newest first, filtered by status, paged with the `after` cursor,
// refreshed every 2 s while any shown job is active (5 s otherwise); and the "submit a job" form.

import { api, newIdempotencyKey } from "./api.js";
import {
  $,
  el,
  fractionOf,
  iterationText,
  metadataTags,
  progressBar,
  statusBadge,
  TERMINAL,
  timeEl,
} from "./dom.js";

const PAGE = 20;
const MAX_PAGE = 100; // the API's page size limit (BLOCKPRUNE_API_PAGE_SIZE_MAX default)
const REFRESH_MS = 2000;
// With every shown job finished, the list still looks now and then: a job submitted elsewhere
// (the CLI, another tab) appears without a press of Refresh.
const IDLE_REFRESH_MS = 5000;

let token = 0; // bumped when the view changes: an answer for an older view is dropped
let timer = null;
let list = { status: "", limit: PAGE, jobs: [], hasMore: false };

export function stopJobs() {
  token += 1;
  clearTimeout(timer);
}

export function clearJobs() {
  stopJobs();
  $("jobs-table").tBodies[0].replaceChildren();
  list = { status: "", limit: PAGE, jobs: [], hasMore: false };
}

// params: the hash's query, #/jobs?status=running&limit=50
export function showJobs(params) {
  stopJobs();
  const limit = Number.parseInt(params.get("limit") || "", 10);
  const status = params.get("status") || "";
  list = {
    status,
    limit: Number.isFinite(limit) ? Math.max(1, Math.min(MAX_PAGE, limit)) : PAGE,
    jobs: [],
    hasMore: false,
  };
  $("status-filter").value = status;
  $("jobs-table").tBodies[0].replaceChildren();
  $("jobs-empty").hidden = true;
  $("more").hidden = true;
  fetchPage(token, false);
}

function query(limit, after) {
  const q = new URLSearchParams({ limit: String(limit) });
  if (list.status) q.set("status", list.status);
  if (after) q.set("after", after);
  return `/v1/jobs?${q}`;
}

// more: the next page after the last job shown; else the first pages again, as many jobs as
// are shown (a refresh keeps what "load more" added).
async function fetchPage(mine, more) {
  clearTimeout(timer);
  const shown = list.jobs.length;
  const path = more
    ? query(list.limit, list.jobs[shown - 1].id)
    : query(Math.min(MAX_PAGE, Math.max(list.limit, shown)));
  try {
    const page = await api(path);
    if (mine !== token) return;
    list.jobs = more ? list.jobs.concat(page.data) : page.data;
    list.hasMore = page.has_more;
    $("jobs-error").textContent = "";
    draw();
  } catch (e) {
    if (mine !== token) return;
    $("jobs-error").textContent = `Could not load the jobs: ${e.message}`;
  }
  const active = list.jobs.some((job) => !TERMINAL.includes(job.status));
  if (list.jobs.length <= MAX_PAGE) {
    timer = setTimeout(() => fetchPage(mine, false), active ? REFRESH_MS : IDLE_REFRESH_MS);
  }
}

function row(job) {
  const progress = el(
    "div",
    { class: "progress" },
    progressBar(fractionOf(job)),
    el("span", { class: "muted", text: iterationText(job.progress) }),
  );
  // data-label: a narrow window shows each row as a card, every cell with its column's name
  return el(
    "tr",
    { "data-job-id": job.id, "data-status": job.status },
    el(
      "td",
      { "data-label": "job" },
      el("a", { href: `#/jobs/${job.id}`, title: job.id, text: job.id.slice(0, 8) }),
    ),
    el("td", { "data-label": "status" }, statusBadge(job.status)),
    el("td", { "data-label": "method", text: job.method }),
    el("td", { class: "wrap model", "data-label": "model", text: job.model }),
    el("td", { "data-label": "progress" }, progress),
    el("td", { class: "labels", "data-label": "labels" }, ...metadataTags(job.metadata)),
    el("td", { class: "nowrap", "data-label": "created" }, timeEl(job.created_at)),
  );
}

function draw() {
  $("jobs-table").tBodies[0].replaceChildren(...list.jobs.map(row));
  $("jobs-empty").hidden = list.jobs.length > 0;
  $("more").hidden = !list.hasMore;
}

function hashFor(status, limit) {
  const q = new URLSearchParams();
  if (status) q.set("status", status);
  if (limit !== PAGE) q.set("limit", String(limit));
  const s = q.toString();
  return s ? `#/jobs?${s}` : "#/jobs";
}

// "key=value" lines; a line without "=" is the user's mistake, said before anything is sent.
function parseMetadata(text) {
  const metadata = {};
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    const at = line.indexOf("=");
    if (at < 1) throw new Error(`metadata: "${line.trim()}" is not key=value`);
    metadata[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return metadata;
}

function jobBody(form) {
  const data = new FormData(form);
  const text = (name) => String(data.get(name) || "").trim();
  const body = {
    model: text("model"),
    calibration: text("calibration"),
    method: text("method"),
    num_blocks: Number.parseInt(text("num_blocks"), 10),
    samples: Number.parseInt(text("samples"), 10),
    seq_len: Number.parseInt(text("seq_len"), 10),
  };
  const metadata = parseMetadata(String(data.get("metadata") || ""));
  if (Object.keys(metadata).length) body.metadata = metadata;
  const sources = text("evaluation").split(",").map((s) => s.trim()).filter(Boolean);
  const speed = data.get("speed") !== null;
  if (sources.length || speed) body.evaluation = { data: sources, seq_len: body.seq_len, speed };
  return body;
}

// The same body sent again (a retry after no answer) keeps its Idempotency-Key: one job.
let lastBody = null;
let lastKey = null;

async function submit(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const button = form.querySelector("button[type=submit]");
  $("submit-error").textContent = "";
  let body;
  try {
    body = jobBody(form);
  } catch (e) {
    $("submit-error").textContent = e.message;
    return;
  }
  const sent = JSON.stringify(body);
  if (sent !== lastBody) {
    lastBody = sent;
    lastKey = newIdempotencyKey();
  }
  button.disabled = true;
  try {
    const job = await api("/v1/jobs", {
      method: "POST",
      body,
      headers: { "Idempotency-Key": lastKey },
    });
    lastBody = null;
    form.reset(); // the next job starts from the defaults, the form closed
    $("submit").open = false;
    location.hash = `#/jobs/${job.id}`;
  } catch (e) {
    $("submit-error").textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

export function initJobs() {
  $("status-filter").addEventListener("change", (e) => {
    location.hash = hashFor(e.target.value, list.limit);
  });
  // Each starts a new request chain: an answer of the one before is dropped.
  $("refresh").addEventListener("click", () => {
    stopJobs();
    fetchPage(token, false);
  });
  $("more").addEventListener("click", () => {
    stopJobs();
    fetchPage(token, true);
  });
  $("submit-form").addEventListener("submit", submit);
}

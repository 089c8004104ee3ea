// #/jobs/<id>: one job, polled every second until it ends: status, progress, the PPL chart, the
// layer map, the evaluation, events, artifacts (presigned links) and a cancel button.

import { api } from "./api.js";
import { layerMap, pplChart } from "./charts.js";
import {
  $,
  CANCELLABLE,
  el,
  fmtNumber,
  fmtPpl,
  fmtSize,
  fmtTime,
  fractionOf,
  iterationText,
  setText,
  statusBadge,
  TERMINAL,
  timeEl,
} from "./dom.js";

const POLL_MS = 1000;
const FIELDS = [
  ...["phase", "iteration", "scored", "best", "base", "method", "model"],
  ...["calibration", "attempts", "finished"],
];
const RETRY_MS = 3000;

let token = 0;
let timer = null;
let seen = null; // what this page has drawn of the job: redraw only what changed

export function stopJob() {
  token += 1;
  clearTimeout(timer);
}

export function clearJob() {
  stopJob();
  seen = null;
  for (const id of ["ppl-chart", "layer-map", "evaluation-table", "artifacts-table"]) {
    $(id).replaceChildren();
  }
  for (const id of ["events-table", "job-metadata", "job-status"]) $(id).replaceChildren();
}

export function showJob(id) {
  clearJob();
  seen = { id, updated: null, drawn: null, layers: 0, artifacts: false };
  $("job-id").textContent = id;
  $("job-error").textContent = "";
  $("job-failure").textContent = "";
  $("artifacts-note").textContent = "";
  $("evaluation").hidden = true;
  $("cancel-box").hidden = true;
  $("cancel-confirm").hidden = true;
  $("view-job").dataset.polling = "live";
  // Every field of the job before: a job that fails to load shows none of another's figures.
  for (const field of FIELDS) setText(`job-${field}`, "");
  $("job-status").replaceChildren();
  $("job-created").replaceChildren();
  $("job-bar").style.width = "0%";
  $("job-live").textContent = "loading…";
  poll(token, id);
}

async function poll(mine, id) {
  let job;
  try {
    job = await api(`/v1/jobs/${encodeURIComponent(id)}`);
  } catch (e) {
    if (mine !== token) return;
    $("job-error").textContent = `Could not load the job: ${e.message}`;
    if (e.status !== 404 && e.status !== 401) {
      $("job-live").textContent = `retrying in ${RETRY_MS / 1000} s`;
      timer = setTimeout(() => poll(mine, id), RETRY_MS);
    } else {
      $("view-job").dataset.polling = "stopped";
      $("job-live").textContent = "not updating";
    }
    return;
  }
  if (mine !== token) return;
  $("job-error").textContent = "";
  draw(job);
  if (job.updated_at !== seen.updated) {
    seen.updated = job.updated_at;
    loadEvents(mine, id);
  }
  if (job.status === "succeeded" && !seen.artifacts) {
    seen.artifacts = true;
    loadArtifacts(mine, id);
  } else if (job.status !== "succeeded") {
    $("artifacts-note").textContent = "The export's files come with success.";
  }
  if (TERMINAL.includes(job.status)) {
    $("view-job").dataset.polling = "stopped";
    setText("job-live", "final");
  } else {
    setText("job-live", "updating every second");
    timer = setTimeout(() => poll(mine, id), POLL_MS);
  }
}

function draw(job) {
  const p = job.progress;
  const running = job.status === "running" && job.phase === "searching";
  $("job-status").replaceChildren(statusBadge(job.status));
  $("view-job").dataset.status = job.status;
  setText("job-phase", job.phase);
  setText("job-iteration", iterationText(p));
  const stage = p.stage ? `stage ${p.stage}/${p.stages}: ` : ""; // a racing search's stages
  const scored = p.total_candidates ? `${stage}${p.scored} / ${p.total_candidates}` : "";
  // evo's search before its removals: generations, not candidates
  const generation = p.generation != null ? `generation ${p.generation} / ${p.generations}` : "";
  const ended = TERMINAL.includes(job.status);
  // A new iteration has scored nothing yet: what the last one showed stays until it has.
  if (generation || scored || ended) setText("job-scored", generation || scored);
  const last = job.removed.length ? job.removed[job.removed.length - 1] : null;
  if (ended) {
    const named = last ? ` (final, after ${last.block}.${last.layer})` : "";
    setText("job-best", last ? fmtPpl(last.ppl) + named : "");
  } else if (p.best_ppl !== null) {
    const block = p.best_block ? ` (${p.best_block.block}.${p.best_block.layer})` : "";
    setText("job-best", fmtPpl(p.best_ppl) + block);
  }
  setText("job-base", fmtPpl(job.base_ppl));
  const search = job.search === "racing" ? ", racing" : "";
  setText("job-method", `${job.method}, ${job.block_types}${search}`);
  setText("job-model", job.model);
  setText("job-calibration", `${job.calibration} (${job.samples} × ${job.seq_len} tokens)`);
  setText("job-attempts", `${job.attempts} of ${job.max_attempts}`);
  $("job-created").replaceChildren(timeEl(job.created_at));
  setText("job-finished", job.finished_at ? fmtTime(job.finished_at) : "");
  $("job-bar").style.width = `${(fractionOf(job) * 100).toFixed(1)}%`;
  $("cancel-box").hidden = !CANCELLABLE.includes(job.status);
  $("job-failure").textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
  drawMetadata(job.metadata);

  // The layer count is not in the API: the highest layer the job has named, plus one.
  const named = [...job.removed, p.best_block, p.last_block].filter(Boolean);
  seen.layers = Math.max(seen.layers, ...named.map((b) => b.layer + 1));
  const pending = running && p.scored > 0 ? p.best_ppl : null;
  const picture = JSON.stringify([job.base_ppl, job.removed, pending, seen.layers, ended]);
  if (picture !== seen.drawn) {
    seen.drawn = picture;
    const steps = p.total_iterations || job.num_blocks;
    $("ppl-chart").replaceChildren(pplChart(job.base_ppl, job.removed, steps, pending, ended));
    $("layer-map").replaceChildren(layerMap(job.removed, seen.layers, ended));
  }
  const report = job.evaluation && job.evaluation.report;
  $("evaluation").hidden = !report;
  if (report) $("evaluation-table").replaceChildren(...evaluationRows(report));
}

function drawMetadata(metadata) {
  const entries = Object.entries(metadata || {});
  const items = entries.flatMap(([key, value]) => [
    el("dt", { text: key }),
    el("dd", { class: "wrap", text: value }),
  ]);
  if (!items.length) items.push(el("dd", { class: "muted", text: "none" }));
  $("job-metadata").replaceChildren(...items);
}

// The rows of core/report.py's table_rows: parameters, PPL per source, task metrics, speed.
function evaluationRows(report) {
  const names = report.variants || [];
  const rows = [["measure", ...names]];
  const params = report.params || {};
  rows.push(["parameters", ...names.map((n) => (params[n] ?? "–").toLocaleString())]);
  for (const [source, entry] of Object.entries(report.perplexity || {})) {
    rows.push([`ppl ${source}`, ...names.map((n) => fmtNumber(entry[n], 3))]);
  }
  for (const [task, entry] of Object.entries(report.tasks || {})) {
    const first = entry[names[0]] || {};
    const metric = "acc_norm" in first ? "acc_norm" : "acc";
    rows.push([`${task} ${metric}`, ...names.map((n) => fmtNumber((entry[n] || {})[metric], 4))]);
  }
  const speed = report.speed;
  if (speed) {
    const of = (n, key) => (speed[n] || {})[key];
    rows.push(["prefill tok/s", ...names.map((n) => fmtNumber(of(n, "prefill_tokens_per_s"), 1))]);
    rows.push(["decode tok/s", ...names.map((n) => fmtNumber(of(n, "decode_tokens_per_s"), 1))]);
    const mib = (n) => of(n, "peak_memory_bytes") / 2 ** 20;
    rows.push(["peak memory MiB", ...names.map((n) => fmtNumber(mib(n), 1))]);
  }
  const [header, ...body] = rows;
  return [
    el("thead", {}, el("tr", {}, ...header.map((h) => el("th", { text: h })))),
    el(
      "tbody",
      {},
      ...body.map(([label, ...cells]) =>
        el("tr", {}, el("th", { text: label }), ...cells.map((c) => el("td", { text: c }))),
      ),
    ),
  ];
}

function eventValue(value) {
  if (typeof value === "string") return value;
  if (typeof value === "number" && !Number.isInteger(value)) return String(+value.toPrecision(6));
  return JSON.stringify(value);
}

function eventDetails(data) {
  return Object.entries(data || {})
    .map(([key, value]) => `${key}=${eventValue(value)}`)
    .join(", ");
}

async function loadEvents(mine, id) {
  try {
    const events = (await api(`/v1/jobs/${encodeURIComponent(id)}/events`)).data;
    if (mine !== token) return;
    const rows = events
      .slice()
      .reverse()
      .map((e) =>
        el(
          "tr",
          { "data-kind": e.kind },
          el("td", { class: "nowrap" }, timeEl(e.created_at)),
          el("td", { text: e.kind }),
          el("td", { class: "details", text: eventDetails(e.data) }),
        ),
      );
    $("events-table").replaceChildren(el("tbody", {}, ...rows));
  } catch (e) {
    if (mine === token) $("job-error").textContent = `Could not load the events: ${e.message}`;
  }
}

async function loadArtifacts(mine, id) {
  let answer;
  try {
    answer = await api(`/v1/jobs/${encodeURIComponent(id)}/artifacts`);
  } catch (e) {
    if (mine === token) $("artifacts-note").textContent = `No artifacts: ${e.message}`;
    return;
  }
  if (mine !== token) return;
  const minutes = Math.round(answer.expires_in / 60);
  $("artifacts-note").textContent =
    `Download links are valid for ${minutes} min from when this page loaded them.`;
  const rows = answer.files.map((f) => {
    // Only http(s) links: a URL is the server's, but never let one be javascript:.
    const safe = /^https?:\/\//i.test(f.url);
    const link = safe
      ? el("a", { href: f.url, rel: "noopener noreferrer", download: f.name, text: f.name })
      : el("span", { text: f.name });
    return el(
      "tr",
      { "data-name": f.name, "data-sha256": f.sha256 },
      el("td", { class: "wrap" }, link),
      el("td", { class: "nowrap", text: fmtSize(f.size) }),
      el("td", {}, el("code", { class: "sha", title: f.sha256, text: f.sha256.slice(0, 16) })),
    );
  });
  const head = el("tr", {}, ...["file", "size", "sha256"].map((h) => el("th", { text: h })));
  $("artifacts-table").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
}

async function cancel() {
  const id = seen && seen.id;
  if (!id) return;
  $("cancel-confirm").hidden = true;
  $("cancel").disabled = true;
  try {
    const job = await api(`/v1/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    if (seen && seen.id === id) draw(job);
  } catch (e) {
    $("job-error").textContent = `Could not cancel: ${e.message}`;
  } finally {
    $("cancel").disabled = false;
  }
}

export function initJob() {
  $("cancel").addEventListener("click", () => {
    $("cancel-confirm").hidden = false;
    $("cancel-yes").focus();
  });
  $("cancel-no").addEventListener("click", () => {
    $("cancel-confirm").hidden = true;
  });
  $("cancel-yes").addEventListener("click", cancel);
}

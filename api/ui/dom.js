// Building the page from data: every value from the API goes in as text (textContent, text
// nodes, setAttribute), never as HTML. Job metadata and error messages are tenant-controlled.

export const TERMINAL = ["succeeded", "failed", "cancelled"];
export const CANCELLABLE = ["queued", "running"];
const SVG_NS = "http://www.w3.org/2000/svg";

function build(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.setAttribute("class", value);
    else if (name === "text") node.textContent = String(value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child); // a string: a text node
  }
  return node;
}

// el("td", {class: "x", title: job.id}, "text", otherNode)
export const el = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
export const svg = (tag, attrs, ...children) =>
  build(document.createElementNS(SVG_NS, tag), attrs, children);

export const $ = (id) => document.getElementById(id);

export function setText(id, value) {
  $(id).textContent = value === null || value === undefined || value === "" ? "–" : String(value);
}

export function fmtPpl(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "–";
  return value >= 1000 ? value.toFixed(1) : value.toFixed(3);
}

export function fmtNumber(value, digits) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
}

export function fmtTime(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

export function fmtSize(bytes) {
  if (typeof bytes !== "number") return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = bytes;
  let unit = 0;
  while (n >= 1024 && unit < units.length - 1) {
    n /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${n} B` : `${n.toFixed(1)} ${units[unit]}`;
}

export function statusBadge(status) {
  return el("span", { class: `status status-${status}`, text: status });
}

export function timeEl(iso) {
  return el("time", { datetime: iso, title: iso || "", text: fmtTime(iso) });
}

// The share of the job done, 0..1 (a succeeded job is whole; a ratio target has no fraction).
export function fractionOf(job) {
  if (job.status === "succeeded") return 1;
  const fraction = job.progress && job.progress.fraction;
  return typeof fraction === "number" ? Math.max(0, Math.min(1, fraction)) : 0;
}

export function iterationText(progress) {
  const total = progress.total_iterations;
  return `${progress.iteration} / ${total === null || total === undefined ? "?" : total}`;
}

// A progress bar; its width is set through the CSSOM (allowed by the CSP, unlike style="").
export function progressBar(fraction) {
  const fill = el("div", { class: "bar-fill" });
  fill.style.width = `${(fraction * 100).toFixed(1)}%`;
  return el("div", { class: "bar-track", role: "progressbar", "aria-valuenow": fraction }, fill);
}

export function metadataTags(metadata) {
  return Object.entries(metadata || {}).map(([key, value]) =>
    el("span", { class: "tag", text: `${key}=${value}` }),
  );
}

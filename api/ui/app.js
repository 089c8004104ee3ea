// The dashboard's entry: sign-in and sign-out, and routing on location.hash (#/jobs,
// #/jobs?status=running, #/jobs/<id>), so that a reload shows the same page.

import { api, clearKey, getKey, onUnauthorized, setKey } from "./api.js";
import { $ } from "./dom.js";
import { clearJob, initJob, showJob, stopJob } from "./job.js";
import { clearJobs, initJobs, showJobs, stopJobs } from "./jobs.js";

const VIEWS = ["signin", "jobs", "job"];
const JOB_ROUTE = /^\/jobs\/([0-9a-fA-F-]{36})$/;

function show(name) {
  for (const view of VIEWS) $(`view-${view}`).hidden = view !== name;
}

function parseHash() {
  const hash = location.hash.replace(/^#/, "") || "/jobs";
  const at = hash.indexOf("?");
  const path = at < 0 ? hash : hash.slice(0, at);
  return { path, params: new URLSearchParams(at < 0 ? "" : hash.slice(at + 1)) };
}

function route() {
  stopJobs();
  stopJob();
  if (!getKey()) {
    show("signin");
    $("signin-key").focus();
  } else {
    const { path, params } = parseHash();
    const job = path.match(JOB_ROUTE);
    if (job) {
      show("job");
      showJob(job[1].toLowerCase());
    } else {
      show("jobs");
      showJobs(params);
    }
  }
  // The route now shown (its old rows cleared): what a test waits for after a hash change.
  document.body.dataset.route = location.hash;
}

async function whoAmI() {
  $("signout").hidden = false;
  try {
    const tenant = await api("/v1/tenant");
    $("who").textContent = `tenant ${tenant.name}`;
  } catch {
    $("who").textContent = ""; // a 401 signs out; anything else can wait for the next page
  }
}

// Forget the key and every tenant's value on the page.
function signOut(message) {
  clearKey();
  clearJobs();
  clearJob();
  $("who").textContent = "";
  $("signout").hidden = true;
  $("signin-error").textContent = message || "";
  route();
}

async function signIn(event) {
  event.preventDefault();
  const input = $("signin-key");
  const key = input.value.trim();
  if (!key) return;
  input.value = "";
  setKey(key);
  $("signin-error").textContent = "";
  let tenant;
  try {
    tenant = await api("/v1/tenant"); // a refused key signs out again, with the API's message
  } catch (e) {
    if (e.status !== 401) {
      clearKey();
      $("signin-error").textContent = `Could not sign in: ${e.message}`;
    }
    return;
  }
  $("who").textContent = `tenant ${tenant.name}`;
  $("signout").hidden = false;
  if (!location.hash) {
    location.hash = "#/jobs"; // the address says where the user is; hashchange routes
  } else {
    route();
  }
}

function start() {
  onUnauthorized((e) => signOut(`The key was refused: ${e.message}.`));
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut("Signed out."));
  initJobs();
  initJob();
  window.addEventListener("hashchange", route);
  if (getKey()) whoAmI();
  route();
}

start();

// The groklab dashboard: a single page with hash routes (#/experiments, #/experiments/<id>,
// #/sweeps, #/sweeps/<id>, #/reproductions, #/reproductions/<name>/runs/<sweep id>) over the
// /api/v1 API, signed in with a bearer token kept in sessionStorage. A "#token=..." fragment
// signs in too (for scripted use); it is stored and removed from the address bar. The token
// never goes into a query string. The pages themselves are in experiment.js, circuit.js,
// sweeps.js and reproductions.js; this file starts the app, so it loads last. No inline
// scripts, inline handlers or eval anywhere (styles go through the CSSOM), so the page can run
// under a strict Content-Security-Policy.
"use strict";

const API = "/api/v1";
const TOKEN_KEY = "groklab.token";
const LIST_POLL_MS = 5000;
const RUN_POLL_MS = 3000;
const ACTIVE = ["queued", "running"]; // a worker holds it or will take it
const UNFINISHED = [...ACTIVE, "paused"]; // it may still change: followed live, cancellable
const STATUSES = ["queued", "running", "paused", "succeeded", "failed", "cancelled", "pruned"];

const $ = (sel, root = document) => root.querySelector(sel);

// ---- the token, the API and the error banner ----------------------------------------------

const session = { token: null, who: null };

function takeFragmentToken() {
  const hash = location.hash.replace(/^#/, "");
  const params = new URLSearchParams(hash.includes("token=") ? hash.replace(/^.*?(?=token=)/, "") : "");
  const token = params.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    const route = hash.split(/[?&]?token=/)[0];
    history.replaceState(null, "", location.pathname + "#" + (route.startsWith("/") ? route : "/experiments"));
  }
  session.token = sessionStorage.getItem(TOKEN_KEY);
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function detailOf(body) {
  if (!body || body.detail === undefined) return null;
  if (typeof body.detail === "string") return body.detail;
  if (Array.isArray(body.detail)) {
    return body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  }
  return JSON.stringify(body.detail);
}

// fetch() on the API with the bearer token; an ApiError that says what went wrong otherwise.
async function api(path, { method = "GET", signal, raw = false, headers = {}, body } = {}) {
  let response;
  try {
    response = await fetch(API + path, {
      method, signal, body, headers: { Authorization: `Bearer ${session.token}`, ...headers },
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "server unreachable: the groklab API did not answer (is it running?)");
  }
  if (response.ok) return raw ? response : response.json();
  let answer = null;
  try { answer = await response.json(); } catch (_) { /* not JSON */ }
  const detail = detailOf(answer);
  if (response.status === 401) {
    throw new ApiError(401, "invalid or revoked token: sign in again with a valid one");
  }
  if (response.status === 404) throw new ApiError(404, "not found: " + (detail || path));
  if (response.status >= 500) {
    throw new ApiError(response.status, `server error ${response.status}: ${detail || response.statusText}`);
  }
  throw new ApiError(response.status, detail || `${response.status} ${response.statusText}`);
}

function showError(message) {
  const banner = $("#error-banner");
  banner.textContent = message;
  banner.hidden = false;
}

function clearError() { $("#error-banner").hidden = true; }

// An error of a view: a bad token sends back to sign in; anything else stays in the banner.
function fail(err) {
  if (err && err.name === "AbortError") return;
  if (err instanceof ApiError) console.warn(err.message); // expected: shown in the banner
  else console.error(err);
  showError(err instanceof ApiError ? err.message : `unexpected error: ${err}`);
  if (err instanceof ApiError && err.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    session.token = null;
    session.who = null;
    showSignIn();
  }
}

// ---- helpers for building the page ---------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style") el.style.cssText = v; // CSSOM, which a Content-Security-Policy allows
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Replaces el's children (null and false children are left out, as in h()).
function put(el, ...children) {
  el.replaceChildren();
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

function badge(status) { return h("span", { class: `badge ${status}` }, status); }

function progressBar(step, total) {
  const pct = total > 0 ? Math.min(100, (100 * step) / total) : 0;
  return h("div", { class: "progress", title: `${step} / ${total} steps` },
    h("div", { class: "bar", style: `width:${pct.toFixed(1)}%` }),
    h("span", {}, `${step} / ${total}`));
}

function when(iso) { return iso ? new Date(iso).toLocaleString() : "—"; }

function fmt(v, digits = 4) {
  if (v === null || v === undefined) return "—";
  if (typeof v !== "number") return String(v);
  return Number.isInteger(v) ? String(v) : v.toPrecision(digits);
}

function download(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ---- routing -------------------------------------------------------------------------------

let view = null; // {stop()} of the view on screen: its timers and streams

function stopView() {
  if (view) view.stop();
  view = null;
}

function showSignIn() {
  stopView();
  $("#signin").hidden = false;
  $("#view").innerHTML = "";
  $("#whoami").textContent = "";
  $("#sign-out").hidden = true;
}

async function route() {
  stopView();
  clearError();
  if (!session.token) { showSignIn(); return; }
  $("#signin").hidden = true;
  $("#sign-out").hidden = false;
  const path = location.hash.replace(/^#/, "") || "/experiments";
  const parts = path.split("/").filter(Boolean);
  const main = $("#view");
  main.innerHTML = "";
  const controller = new AbortController();
  const timers = [];
  // This route's view: a later route (another hash change while this one still waits for
  // /whoami) replaces it, and this one then draws nothing into the page.
  const mine = view = {
    signal: controller.signal,
    every(ms, fn) { timers.push(setInterval(fn, ms)); },
    stop() { controller.abort(); timers.forEach(clearInterval); },
  };
  try {
    if (!session.who) {
      const who = await api("/whoami", { signal: mine.signal });
      session.who = session.who || who;
      $("#whoami").textContent = `${session.who.owner} (${session.who.scope})`;
    }
    if (view !== mine) return;
    if (parts[0] === "experiments" && parts[1]) await experimentPage(main, parts[1], mine);
    else if (parts[0] === "sweeps" && parts[1]) await sweepPage(main, parts[1], mine);
    else if (parts[0] === "sweeps") await sweepList(main, mine);
    else if (parts[0] === "reproductions" && parts[2] === "runs" && parts[3]) await reproductionRun(main, parts[1], parts[3], mine);
    else if (parts[0] === "reproductions") await reproductionList(main, mine);
    else await experimentList(main, mine);
  } catch (err) {
    fail(err);
  }
}

// ---- the experiments list ------------------------------------------------------------------

async function experimentList(main, v) {
  const status = h("select", { id: "filter-status" },
    h("option", { value: "" }, "any status"), STATUSES.map((s) => h("option", { value: s }, s)));
  const name = h("input", { id: "filter-name", type: "search", placeholder: "exact name" });
  const body = h("tbody");
  const more = h("button", { type: "button", id: "more", hidden: true }, "More");
  const filters = JSON.parse(sessionStorage.getItem("groklab.filters") || "{}");
  status.value = filters.status || "";
  name.value = filters.name || "";
  let pages = 1;

  main.append(
    h("h1", {}, "Experiments"),
    h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); pages = 1; load(); } },
      h("label", {}, "Status ", status), h("label", {}, "Name ", name),
      h("button", { type: "submit" }, "Filter")),
    h("table", { id: "experiments", class: "list" },
      h("thead", {}, h("tr", {}, ["Name", "Status", "Phase", "Progress", "Created"].map((c) => h("th", {}, c)))),
      body),
    more,
  );
  status.addEventListener("change", () => { pages = 1; load(); });
  more.addEventListener("click", () => { pages += 1; load(); });

  async function load() {
    sessionStorage.setItem("groklab.filters", JSON.stringify({ status: status.value, name: name.value }));
    const items = [];
    let cursor = null;
    for (let i = 0; i < pages; i++) {
      const q = new URLSearchParams();
      if (status.value) q.set("status", status.value);
      if (name.value.trim()) q.set("name", name.value.trim());
      if (cursor) q.set("cursor", cursor);
      const page = await api(`/experiments?${q}`, { signal: v.signal });
      items.push(...page.items);
      cursor = page.next_cursor;
      if (!cursor) break;
    }
    more.hidden = !cursor;
    put(body, ...items.map((e) => h("tr", { "data-id": e.id },
      h("td", {}, h("a", { href: `#/experiments/${e.id}` }, e.name)),
      h("td", {}, badge(e.status)),
      h("td", {}, (e.summary && e.summary.phase) || "—"),
      h("td", {}, progressBar(e.progress.step, e.progress.total_steps)),
      h("td", {}, when(e.created_at)))));
    if (items.length === 0) body.append(h("tr", {}, h("td", { colspan: 5, class: "empty" }, "no experiments")));
    clearError();
  }

  await load();
  v.every(LIST_POLL_MS, () => load().catch(fail));
}

// ---- start ---------------------------------------------------------------------------------

$("#signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const token = $("#token-input").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  session.token = token;
  session.who = null;
  $("#token-input").value = "";
  route();
});

$("#sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  session.token = null;
  session.who = null;
  showSignIn();
});

window.addEventListener("hashchange", () => {
  if (location.hash.includes("token=")) { takeFragmentToken(); session.who = null; }
  route();
});

takeFragmentToken();
route();

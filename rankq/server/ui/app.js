// RankQ dashboard: plain JavaScript against the normal API. The token lives in sessionStorage and
// travels only in the Authorization header (the live feed is read with fetch() for that reason).
"use strict";

const TOKEN_KEY = "rankq.token";
const $ = (sel) => document.querySelector(sel);
const state = { snapshot: null, page: null, queue: null, readOnly: false, waitingForToken: null };

// ---- small helpers ---------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}
const fmtInt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const fmtRate = (n) => (n ? (n >= 100 ? Math.round(n).toLocaleString("en-US") : n.toFixed(1)) : "0");
function fmtAge(sec) {
  if (sec === null || sec === undefined) return "–";
  if (sec < 1) return Math.round(sec * 1000) + " ms";
  if (sec < 120) return sec.toFixed(1) + " s";
  if (sec < 7200) return (sec / 60).toFixed(1) + " min";
  return (sec / 3600).toFixed(1) + " h";
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const payloadText = (m) => (m.payload_base64 ? "base64:" + m.payload_base64 : JSON.stringify(m.payload));

function banner(text, kind) {
  const b = $("#banner");
  if (!text) { b.hidden = true; b.textContent = ""; return; }
  b.hidden = false; b.textContent = text; b.className = "banner" + (kind ? " " + kind : "");
}

// ---- API access ----------------------------------------------------------------------------------

const token = () => sessionStorage.getItem(TOKEN_KEY);
function authHeaders(extra) {
  const h = Object.assign({ Accept: "application/json" }, extra || {});
  const t = token();
  if (t) h.Authorization = "Bearer " + t;
  return h;
}

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

async function errorOf(resp) {
  let detail = resp.statusText || "request failed";
  try { const body = await resp.json(); if (body && body.detail) detail = body.detail; } catch (_) { /* not JSON */ }
  const what = { 401: "Not signed in", 403: "Not allowed", 404: "Not found", 409: "Conflict", 503: "Unavailable" }[resp.status];
  return new ApiError(resp.status, `${what ? what + ": " : ""}${detail} (HTTP ${resp.status})`);
}

async function api(path, opts) {
  opts = opts || {};
  const headers = authHeaders(opts.body !== undefined ? { "Content-Type": "application/json" } : {});
  let resp;
  try {
    resp = await fetch(path, { method: opts.method || "GET", headers,
      body: opts.body !== undefined ? JSON.stringify(opts.body) : undefined });
  } catch (e) {
    throw new ApiError(0, "The server cannot be reached: " + e.message);
  }
  if (resp.status === 401) { askToken("The server refused the request: a valid API token is needed."); }
  if (!resp.ok) throw await errorOf(resp);
  if (resp.status === 204) return null;
  return resp.json();
}

// ---- token prompt --------------------------------------------------------------------------------

function askToken(reason) {
  const d = $("#token-dialog");
  $("#token-reason").textContent = reason || "Enter an API token for this server.";
  $("#token-input").value = "";
  if (!d.open) d.showModal();
  if (!state.waitingForToken) {
    let resolve;
    const p = new Promise((r) => { resolve = r; });
    state.waitingForToken = { p, resolve };
  }
  return state.waitingForToken.p;
}

function tokenSaved() {
  const w = state.waitingForToken;
  state.waitingForToken = null;
  setReadOnly(false);
  if (w) w.resolve();
  route();
}

// ---- read-only mode (a 403 on an admin action) ---------------------------------------------------

function setReadOnly(on) {
  state.readOnly = on;
  $("#access").textContent = on ? "read-only: this token may not change queues" : "";
  for (const b of document.querySelectorAll("button.admin")) b.disabled = on;
  for (const b of document.querySelectorAll("#dlq input[type=checkbox], #dlq-all")) b.disabled = on;
}

async function adminAction(fn) {
  if (state.readOnly) return;
  try {
    return await fn();
  } catch (e) {
    if (e.status === 403) {
      setReadOnly(true);
      banner("Not allowed: your token is read-only (it lacks the admin scope), so redrive and delete are disabled.");
    } else {
      banner(e.message);
    }
    return undefined;
  }
}

// ---- live feed (Server-Sent Events read with fetch, so the token stays in a header) ----------------

function setLive(on, text) {
  const l = $("#live");
  l.className = "live " + (on ? "on" : "off");
  l.textContent = text || (on ? "live" : "disconnected, retrying…");
}

async function runFeed() {
  let backoff = 500;
  for (;;) {
    try {
      const resp = await fetch("/api/v1/dashboard/stream", { headers: authHeaders({ Accept: "text/event-stream" }), cache: "no-store" });
      if (resp.status === 401) {
        setLive(false, "needs a token");
        await askToken("This server asks for an API token.");
        continue;
      }
      if (!resp.ok) throw await errorOf(resp);
      backoff = 500;
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
          if (data) { setLive(true); onSnapshot(JSON.parse(data)); }
        }
      }
      setLive(false);
    } catch (e) {
      setLive(false);
      if (e instanceof ApiError) banner("Live feed: " + e.message);
    }
    await sleep(backoff);
    backoff = Math.min(backoff * 2, 5000);
  }
}

function onSnapshot(snap) {
  const first = state.snapshot === null;
  state.snapshot = snap;
  const $b = $("#banner");
  if (!$b.hidden && $b.textContent.startsWith("Live feed:")) banner(null);
  const self = snap.cluster.members.find((m) => m.self);
  $("#node").textContent = self ? `node ${self.id} · ${self.role}` : "";
  if (state.page === "overview") renderOverview();
  if (state.page === "queue") renderQueueCounts(first);
}

// ---- overview ------------------------------------------------------------------------------------

function sparkline(points) {
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 160 28");
  svg.setAttribute("preserveAspectRatio", "none");
  if (points && points.length > 1) {
    const max = Math.max(1, ...points);
    const step = 160 / (points.length - 1);
    const line = document.createElementNS(svgNS, "polyline");
    line.setAttribute("points", points.map((v, i) => `${(i * step).toFixed(1)},${(26 - (v / max) * 24).toFixed(1)}`).join(" "));
    svg.append(line);
  }
  return svg;
}

function renderOverview() {
  const snap = state.snapshot;
  if (!snap) return;
  const body = $("#queues tbody");
  body.replaceChildren();
  const queues = [...snap.queues].sort((a, b) => a.name.localeCompare(b.name));
  $("#no-queues").hidden = queues.length > 0;
  for (const q of queues) {
    const c = q.counts;
    const age = q.oldest_ready_age;
    body.append(el("tr", { "data-queue": q.name },
      el("td", {}, el("a", { href: "#/queue/" + encodeURIComponent(q.name), text: q.name })),
      el("td", { class: "num ready", text: fmtInt(c.ready) }),
      el("td", { class: "num delayed", text: fmtInt(c.delayed) }),
      el("td", { class: "num leased", text: fmtInt(c.leased) }),
      el("td", { class: "num dead" + (c.dead > 0 ? " bad" : ""), text: fmtInt(c.dead) }),
      el("td", { class: "num enq-rate", text: fmtRate(q.rates.enqueued) }),
      el("td", { class: "num ack-rate", text: fmtRate(q.rates.acked) }),
      el("td", { class: "num age" + (age > 300 ? " bad" : age > 60 ? " warn" : ""), text: fmtAge(age) }),
      el("td", {}, sparkline(q.sparkline)),
    ));
  }
  const cl = snap.cluster;
  const item = (label, value, cls) => el("div", {}, el("span", { text: label }), el("b", { class: cls || null, text: value }));
  $("#cluster-summary").replaceChildren(
    item("Leader", cl.leader || "none", cl.leader ? "role-leader" : "down"),
    item("Term", fmtInt(cl.term)),
    item("Commit index", fmtInt(cl.commit_index)),
    item("Applied", fmtInt(cl.last_applied)),
    item("Quorum", cl.has_quorum === false ? "LOST" : "yes", cl.has_quorum === false ? "down" : "ok"),
  );
  const mb = $("#members tbody");
  mb.replaceChildren();
  for (const m of cl.members) {
    const healthy = m.self || m.healthy;
    mb.append(el("tr", { "data-member": m.id },
      el("td", {}, m.http_url ? el("a", { href: m.http_url + "/ui", text: m.id }) : m.id, m.self ? el("span", { class: "muted", text: " (this node)" }) : null),
      el("td", { text: m.address }),
      el("td", { class: "role-" + m.role, text: m.role }),
      el("td", { class: healthy ? "ok" : "down", text: healthy ? "connected" : "unreachable" }),
      el("td", { class: "num", text: fmtInt(m.match_index) }),
      el("td", { class: "num" + (m.lag > 1000 ? " bad" : ""), text: m.lag === null ? (cl.members.find((x) => x.self && x.role === "leader") ? "–" : "known on leader") : fmtInt(m.lag) }),
    ));
  }
}

// ---- queue page ----------------------------------------------------------------------------------

function renderQueueCounts(refreshLists) {
  const snap = state.snapshot;
  if (!snap) return;
  const q = snap.queues.find((x) => x.name === state.queue);
  if (!q) { $("#q-counts").replaceChildren(el("div", {}, el("span", { text: "state" }), el("b", { text: "not found" }))); return; }
  const box = (label, value, cls) => el("div", { class: cls || null, id: "count-" + label }, el("span", { text: label }), el("b", { text: value }));
  $("#q-counts").replaceChildren(
    box("ready", fmtInt(q.counts.ready)), box("delayed", fmtInt(q.counts.delayed)), box("leased", fmtInt(q.counts.leased)),
    box("dead", fmtInt(q.counts.dead), q.counts.dead > 0 ? "bad" : null), box("oldest", fmtAge(q.oldest_ready_age)),
    box("enqueue/s", fmtRate(q.rates.enqueued)), box("ack/s", fmtRate(q.rates.acked)),
  );
  const key = JSON.stringify(q.counts) + JSON.stringify(q.totals);
  if (refreshLists || state.lastKey !== key) {
    state.lastKey = key;
    loadPeek();
    if (refreshLists || q.counts.dead !== state.lastDead) { state.lastDead = q.counts.dead; loadDlq(); }
  }
}

async function loadQueue() {
  const name = state.queue;
  $("#q-title").textContent = name;
  try {
    const info = await api("/api/v1/queues/" + encodeURIComponent(name));
    const body = $("#q-settings tbody");
    body.replaceChildren();
    for (const [k, v] of Object.entries(info.settings)) {
      body.append(el("tr", {}, el("td", { text: k }), el("td", { text: v === null ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v) })));
    }
    body.append(el("tr", {}, el("td", { text: "created_at" }), el("td", { text: info.created_at })));
  } catch (e) { banner(e.message); }
  loadPeek();
  loadDlq();
}

async function loadPeek() {
  const name = state.queue;
  try {
    const page = await api(`/api/v1/queues/${encodeURIComponent(name)}/peek?limit=20`);
    if (name !== state.queue) return;
    const body = $("#peek tbody");
    body.replaceChildren();
    page.messages.forEach((m, i) => body.append(el("tr", { "data-id": m.id },
      el("td", { class: "num", text: i + 1 }), el("td", { class: "num", text: m.id }), el("td", { class: "num", text: m.priority }),
      el("td", { text: m.group || "" }), el("td", { class: "num", text: m.deliveries }), el("td", { text: m.enqueued_at || "" }),
      el("td", { class: "payload", title: payloadText(m), text: payloadText(m) }))));
    if (!page.messages.length) body.append(el("tr", {}, el("td", { colspan: 7, class: "muted", text: "No ready messages." })));
  } catch (e) { banner(e.message); }
}

async function loadDlq() {
  const name = state.queue;
  try {
    const page = await api(`/api/v1/queues/${encodeURIComponent(name)}/dlq?limit=200`);
    if (name !== state.queue) return;
    const body = $("#dlq tbody");
    const checked = new Set([...document.querySelectorAll("#dlq tbody input:checked")].map((c) => c.value));
    body.replaceChildren();
    for (const m of page.messages) {
      body.append(el("tr", { "data-id": m.id },
        el("td", {}, el("input", { type: "checkbox", value: m.id, checked: checked.has(String(m.id)), "aria-label": "select " + m.id })),
        el("td", { class: "num", text: m.id }), el("td", { class: "num", text: m.priority }), el("td", { text: m.group || "" }),
        el("td", { class: "num", text: m.deliveries }), el("td", { text: m.last_error || "" }),
        el("td", { class: "payload", title: payloadText(m), text: payloadText(m) })));
    }
    if (!page.messages.length) body.append(el("tr", {}, el("td", { colspan: 7, class: "muted", text: "No dead letters." })));
    $("#dlq-count").textContent = page.messages.length ? `(${page.messages.length}${page.next_after ? "+" : ""})` : "";
    setReadOnly(state.readOnly);
  } catch (e) { banner(e.message); }
}

const selectedIds = () => [...document.querySelectorAll("#dlq tbody input:checked")].map((c) => Number(c.value));

async function redrive(ids) {
  const name = state.queue;
  const res = await adminAction(() => api(`/api/v1/queues/${encodeURIComponent(name)}/dlq/redrive`, { method: "POST", body: ids ? { ids } : {} }));
  if (res) {
    banner(`Redrove ${res.redriven.length} message(s)` + (res.not_found.length ? `; ${res.not_found.length} were no longer dead` : "") + ".", "info");
    loadDlq(); loadPeek(); refreshLookup();
  }
}

function refreshLookup() {
  if ($("#lookup-table")) $("#lookup-form").requestSubmit();
}

async function deleteSelected() {
  const name = state.queue;
  const ids = selectedIds();
  if (!ids.length) { banner("Select dead letters to delete first.", "info"); return; }
  let done = 0;
  for (const id of ids) {
    const ok = await adminAction(() => api(`/api/v1/queues/${encodeURIComponent(name)}/messages/${id}`, { method: "DELETE" }));
    if (!ok) break;
    done += 1;
  }
  if (done) banner(`Deleted ${done} dead letter(s).`, "info");
  loadDlq(); refreshLookup();
}

async function lookup(ev) {
  ev.preventDefault();
  const id = $("#lookup-id").value;
  const out = $("#lookup-result");
  out.replaceChildren();
  try {
    const m = await api(`/api/v1/queues/${encodeURIComponent(state.queue)}/messages/${encodeURIComponent(id)}`);
    const rows = [["id", m.id], ["state", m.state], ["priority", m.priority], ["group", m.group], ["deliveries", m.deliveries],
      ["enqueued", m.enqueued_at], ["available at", m.available_at], ["lease expires", m.lease_expires_at], ["acked", m.acked_at],
      ["last error", m.last_error], ["result", m.result === null || m.result === undefined ? null : JSON.stringify(m.result)],
      ["payload", m.payload === null && !m.payload_base64 ? null : payloadText(m)]];
    out.append(el("table", { class: "kv", id: "lookup-table" }, el("tbody", {}, ...rows.filter(([, v]) => v !== null && v !== undefined)
      .map(([k, v]) => el("tr", { "data-field": k }, el("td", { text: k }), el("td", { text: String(v) }))))));
  } catch (e) {
    out.append(el("p", { class: "down", text: e.message }));
  }
}

// ---- routing -------------------------------------------------------------------------------------

function route() {
  const hash = location.hash || "#/";
  const m = hash.match(/^#\/queue\/(.+)$/);
  $("#overview-page").hidden = !!m;
  $("#queue-page").hidden = !m;
  banner(null);
  if (m) {
    state.page = "queue";
    state.queue = decodeURIComponent(m[1]);
    document.title = state.queue + " · RankQ";
    $("#lookup-result").replaceChildren();
    loadQueue();
    renderQueueCounts(false);
  } else {
    state.page = "overview";
    state.queue = null;
    document.title = "RankQ dashboard";
    renderOverview();
  }
}

function init() {
  $("#token-form").addEventListener("submit", () => {
    const v = $("#token-input").value.trim();
    if (v) sessionStorage.setItem(TOKEN_KEY, v);
    tokenSaved();
  });
  $("#token-clear").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); $("#token-dialog").close(); setReadOnly(false); });
  $("#token-button").addEventListener("click", () => askToken(token() ? "Replace the token used by this tab." : "Enter an API token for this server."));
  $("#lookup-form").addEventListener("submit", lookup);
  $("#peek-refresh").addEventListener("click", loadPeek);
  $("#dlq-refresh").addEventListener("click", loadDlq);
  $("#redrive-selected").addEventListener("click", () => {
    const ids = selectedIds();
    if (!ids.length) { banner("Select dead letters to redrive first.", "info"); return; }
    redrive(ids);
  });
  $("#redrive-all").addEventListener("click", () => redrive(null));
  $("#delete-selected").addEventListener("click", deleteSelected);
  $("#dlq-all").addEventListener("change", (ev) => {
    for (const c of document.querySelectorAll("#dlq tbody input[type=checkbox]")) c.checked = ev.target.checked;
  });
  window.addEventListener("hashchange", route);
  route();
  runFeed();
}

init();

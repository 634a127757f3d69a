// The web dashboard: one snapshot (GET /proxy/overview), then live through the event stream
// (GET /proxy/events); every change re-reads the snapshot, at most a few times a second.
// Text from clients (ids, client and model names) only ever goes in through textContent.
"use strict";

const CSRF = { "X-Smart-Proxy-Csrf": "1" };
const EVENT_TYPES = ["enqueue", "dispatch", "first_byte", "complete", "cancel", "reject", "reload",
  "residency", "pause", "resume", "queue_cleared", "heartbeat", "reset", "dropped", "backend"];
const KIND = { attach: "hit", load: "load", swap: "swap", reload: "reload" };
const MAX_LOG = 200;
const $ = (id) => document.getElementById(id);

let source = null;
let refreshTimer = null;
let series = [];
let reloadError = null;
let backends = []; // the last snapshot's health.backends, with the "backend" events since

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  Object.entries(props || {}).forEach(([k, v]) => {
    if (k === "class") node.className = v;
    else if (k === "on") Object.entries(v).forEach(([ev, fn]) => node.addEventListener(ev, fn));
    else node.setAttribute(k, v);
  });
  children.flat().forEach((c) => node.append(c instanceof Node ? c : document.createTextNode(c ?? "")));
  return node;
}

function fmt(v, digits = 1) {
  return v === null || v === undefined ? "–" : Number(v).toFixed(digits);
}

async function api(method, path, body) {
  const init = { method, headers: { ...CSRF }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    return { status: 0, ok: false, data: null, error: "the sidecar did not answer" };
  }
  let data = null;
  try { data = await response.json(); } catch (err) { /* not JSON */ }
  return { status: response.status, ok: response.ok, data, error: errorText(data) };
}

function errorText(data) {
  if (!data || !data.error) return null;
  return typeof data.error === "string" ? data.error : data.error.message || JSON.stringify(data.error);
}

// The banner shows the refused policy edit (until a reload succeeds) and the last failed action
// (until the next action, or 20 s): a refresh redraws it without wiping an action's error.
let actionError = null; // { text, until }

function banner() {
  const lines = [];
  if (reloadError) lines.push(`policy reload failed; the previous policy stays in force:\n${reloadError}`);
  if (actionError && Date.now() < actionError.until) lines.push(actionError.text);
  $("banner").hidden = lines.length === 0;
  $("banner").textContent = lines.join("\n\n");
}

// -- start, login, live stream ---------------------------------------------------------------

async function start() {
  const r = await api("GET", "/proxy/overview");
  if (r.status === 403) return showLogin();
  if (!r.ok) {
    $("status").textContent = "unreachable";
    $("status").className = "badge down";
    setTimeout(start, 3000);
    return;
  }
  $("login").hidden = true;
  $("board").hidden = false;
  $("actions").hidden = false;
  render(r.data);
  connect(r.data.last_event_id);
}

function showLogin() {
  if (source) source.close();
  $("board").hidden = true;
  $("actions").hidden = true;
  $("login").hidden = false;
  $("status").textContent = "signed out";
  $("status").className = "badge";
  $("key").focus();
}

function connect(after) {
  if (source) source.close();
  // The query names where to start; on its own reconnects the browser sends Last-Event-ID,
  // which the sidecar prefers.
  source = new EventSource(`/proxy/events?last_event_id=${after}`);
  source.onopen = () => { $("live").textContent = "● live"; };
  source.onerror = () => {
    $("live").textContent = "○ reconnecting";
    if (source.readyState === EventSource.CLOSED) setTimeout(start, 2000); // refused: re-check
  };
  EVENT_TYPES.forEach((type) => source.addEventListener(type, (e) => onEvent(type, JSON.parse(e.data))));
}

function onEvent(type, ev) {
  if (type !== "heartbeat") logEvent(type, ev);
  if (type === "heartbeat") {
    series.push(ev);
    if (series.length > 720) series.shift();
    drawCharts();
    return;
  }
  if (type === "reload") {
    reloadError = ev.ok ? null : ev.error;
    banner();
  }
  if (type === "backend") { // at once; the refresh below brings its slots and poll age
    renderBackends(backends.map((b) => (b.name === ev.backend ? { ...b, up: ev.up, last_error: ev.error ?? null } : b)));
  }
  if (type === "dropped") return; // the stream ends; the browser reconnects with Last-Event-ID
  scheduleRefresh();
}

function scheduleRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    const r = await api("GET", "/proxy/overview");
    if (r.status === 403) return showLogin();
    if (r.ok) render(r.data);
  }, 250);
}

function logEvent(type, ev) {
  const time = new Date(ev.at * 1000).toLocaleTimeString();
  const what = [
    type === "backend" || (type === "residency" && backends.length > 1) ? ev.backend : null,
    type === "backend" ? (ev.up ? "up" : "down") : null,
    ev.request_id, ev.client, ev.model, ev.action, ev.status, ev.http_status, ev.error, ev.version,
  ].filter((x) => x !== undefined && x !== null && x !== "").join(" ");
  const list = $("events");
  list.prepend(el("li", { class: `event-${type}` }, `${time} ${type} ${what}`));
  while (list.children.length > MAX_LOG) list.lastChild.remove();
}

// -- rendering ------------------------------------------------------------------------------

function render(ov) {
  const h = ov.health;
  $("status").textContent = h.status;
  $("status").className = `badge ${h.status}`;
  $("policy").textContent = `policy ${h.policy.name}@${h.policy.version} · upstream ${h.upstream.up ? "up" : "down"}`;
  $("pause").hidden = h.paused;
  $("resume").hidden = !h.paused;
  reloadError = h.policy.last_reload_error;
  banner();
  const shown = ov.queue.waiting.length < ov.queue.depth ? `, the first ${ov.queue.waiting.length} shown` : "";
  $("depth").textContent = `(${ov.queue.depth} waiting${shown}${h.paused ? ", dispatching paused" : ""})`;
  renderFigures(ov);
  renderBackends(h.backends || []);
  renderResidency(ov.residency);
  renderInFlight(ov.queue.in_flight);
  renderQueue(ov.queue.waiting);
  renderRecent(ov.recent_dispatches);
  renderTop(ov.figures);
  series = ov.series.slice();
  drawCharts();
}

function renderFigures(ov) {
  const f = ov.figures, h = ov.health;
  const items = [
    ["waiting", ov.queue.depth], ["in flight", `${h.in_flight} / ${h.max_parallel}`],
    ["wait p50", `${fmt(f.wait_p50_s)} s`], ["wait p95", `${fmt(f.wait_p95_s)} s`],
    ["wait p99", `${fmt(f.wait_p99_s)} s`],
    ["error rate", f.error_rate === null ? "–" : `${(100 * f.error_rate).toFixed(1)} %`],
    ["requests", f.requests], ["rejected", f.rejected], ["cancelled", f.cancelled],
  ];
  $("figure-list").replaceChildren(...items.map(([k, v]) => el("div", {}, el("dt", {}, k), el("dd", {}, String(v)))));
}

// One row per backend, in the policy's order; the panel is hidden when the sidecar lists none.
function renderBackends(list) {
  backends = list;
  $("backends-panel").hidden = list.length === 0;
  const rows = list.map((b) => el("tr", { "data-backend": b.name },
    el("td", {}, b.name, b.retiring ? el("span", { class: "tag" }, "retiring") : ""),
    el("td", { title: b.last_poll_age_s === null || b.last_poll_age_s === undefined
      ? "no poll has succeeded yet" : `last good poll ${fmt(b.last_poll_age_s, 0)} s ago` },
    el("span", { class: b.up ? "backend-up" : "backend-down" }, b.up ? "up" : "down"),
    !b.up && b.last_error ? el("span", { class: "terms" }, ` ${b.last_error}`) : ""),
    el("td", { class: "num" }, `${b.in_flight} / ${b.max_parallel}`)));
  $("backends").tBodies[0].replaceChildren(...rows);
}

function renderResidency(res) {
  const total = res.vram_total_gb || 0;
  $("vram-total").textContent = `${fmt(res.vram_used_gb)} of ${fmt(total)} GB · ${res.loaded_count} of ${res.max_loaded_models} models`;
  const rows = res.models.map((m) => el("tr", {},
    el("td", {}, m.model),
    el("td", { class: `state-${m.state}` }, m.state + (m.evicting_for ? ` (for ${m.evicting_for})` : "")),
    el("td", { class: "num" }, m.size_gb === null ? "?" : `${fmt(m.size_gb)} GB`),
    el("td", {}, el("meter", { min: "0", max: String(total || 1), value: String(m.size_gb || 0) })),
    el("td", { class: "num" }, String(m.in_flight))));
  $("residency").tBodies[0].replaceChildren(...rows);
}

function cancelButton(id) {
  return el("button", { type: "button", class: "danger", "data-cancel": id, on: { click: (e) => { e.stopPropagation(); cancel(id); } } }, "cancel");
}

function renderInFlight(list) {
  const rows = list.map((f) => el("tr", { class: "clickable", on: { click: () => detail(f.request_id) } },
    el("td", {}, f.request_id), el("td", {}, f.client), el("td", {}, f.model),
    el("td", { class: "num" }, `${fmt(f.elapsed_s)} s`), el("td", {}, cancelButton(f.request_id))));
  $("inflight").tBodies[0].replaceChildren(...rows);
}

function renderQueue(list) {
  const rows = list.map((w) => el("tr", { class: "clickable", "data-request": w.request_id, on: { click: () => detail(w.request_id) } },
    el("td", { class: "num" }, String(w.position)), el("td", {}, w.request_id), el("td", {}, w.client),
    el("td", {}, w.class), el("td", {}, w.model), el("td", { class: "num" }, `${fmt(w.waited_s)} s`),
    el("td", { class: "num" }, fmt(w.score)),
    el("td", { class: "terms" }, Object.entries(w.terms).map(([k, v]) => `${k} ${fmt(v)}`).join(" · ")),
    el("td", { class: "terms" }, w.reason || ""), el("td", {}, cancelButton(w.request_id))));
  $("queue").tBodies[0].replaceChildren(...rows);
}

function renderRecent(list) {
  const rows = list.slice().reverse().map((d) => el("tr", {},
    el("td", {}, new Date(d.at * 1000).toLocaleTimeString()), el("td", {}, d.model), el("td", {}, d.client),
    el("td", { class: `kind-${KIND[d.action]}` }, KIND[d.action] + (d.evicts.length ? ` (evicts ${d.evicts.join(", ")})` : "")),
    el("td", { class: "num" }, `${fmt(d.waited_s)} s`)));
  $("recent").tBodies[0].replaceChildren(...rows);
}

function renderTop(f) {
  const n = Math.max(f.top_clients.length, f.top_models.length);
  const rows = [];
  for (let i = 0; i < n; i++) {
    const c = f.top_clients[i], m = f.top_models[i];
    rows.push(el("tr", {}, el("td", {}, c ? c.name : ""), el("td", { class: "num" }, c ? String(c.requests) : ""),
      el("td", {}, m ? m.name : ""), el("td", { class: "num" }, m ? String(m.requests) : "")));
  }
  $("top").tBodies[0].replaceChildren(...rows);
}

function drawCharts() {
  window.lineChart($("chart-depth"), [{ values: series.map((b) => b.depth), color: "#0969da", label: "waiting" },
    { values: series.map((b) => b.in_flight), color: "#1a7f37", label: "in flight" }]);
  window.lineChart($("chart-wait"), [{ values: series.map((b) => b.wait_p50_s), color: "#0969da", label: "p50" },
    { values: series.map((b) => b.wait_max_s), color: "#cf222e", label: "max" }]);
  window.lineChart($("chart-loads"), [{ values: series.map((b) => b.loads), color: "#9a6700", label: "loads" },
    { values: series.map((b) => b.dispatches), color: "#66707a", label: "dispatches" }]);
}

async function detail(id) {
  const r = await api("GET", `/proxy/requests/${encodeURIComponent(id)}`);
  $("detail").hidden = false;
  $("detail-id").textContent = id;
  const rows = [];
  if (!r.ok) {
    rows.push(el("tr", {}, el("td", {}, "error"), el("td", { class: "error" }, r.error || `HTTP ${r.status}`)));
  } else {
    const d = r.data;
    rows.push(el("tr", {}, el("td", {}, "state"), el("td", {}, d.state)));
    if (d.journal_error) rows.push(el("tr", {}, el("td", {}, "journal"), el("td", { class: "error" }, d.journal_error)));
    const fields = Object.entries({ ...(d.live || {}), ...(d.record || {}) });
    fields.forEach(([k, v]) => {
      if (v === null || ["policy", "state", "request_id"].includes(k)) return;
      const text = typeof v === "object" ? JSON.stringify(v) : String(v);
      rows.push(el("tr", {}, el("td", {}, k), el("td", {}, el("pre", {}, text))));
    });
  }
  $("detail-table").tBodies[0].replaceChildren(...rows);
  $("detail").scrollIntoView({ block: "nearest" });
}

// -- actions --------------------------------------------------------------------------------

async function act(method, path, failure) {
  const r = await api(method, path);
  if (r.status === 403 && !r.error?.startsWith("cross-site")) return showLogin();
  actionError = r.ok ? null : { text: `${failure}: ${r.error || `HTTP ${r.status}`}`, until: Date.now() + 20000 };
  banner();
  if (!r.ok) setTimeout(banner, 20100); // gone after 20 s even when nothing else redraws
  scheduleRefresh();
  return r;
}

async function cancel(id) {
  await act("POST", `/proxy/requests/${encodeURIComponent(id)}/cancel`, `could not cancel ${id}`);
}

function wire() {
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const r = await api("POST", "/proxy/auth", { key: $("key").value });
    if (!r.ok) {
      $("login-error").textContent = r.error || `HTTP ${r.status}`;
      return;
    }
    $("key").value = "";
    $("login-error").textContent = "";
    start();
  });
  $("pause").addEventListener("click", () => act("POST", "/proxy/pause", "pause failed"));
  $("resume").addEventListener("click", () => act("POST", "/proxy/resume", "resume failed"));
  $("clear").addEventListener("click", () => {
    if (window.confirm("Remove every waiting request? Each client gets a 503.")) act("DELETE", "/proxy/queue", "clear failed");
  });
  $("reload").addEventListener("click", async () => {
    const r = await api("POST", "/proxy/policy/reload");
    if (r.status === 403) return showLogin();
    reloadError = r.ok ? null : (r.data && r.data.error) || r.error || `HTTP ${r.status}`;
    banner();
    if (r.ok) scheduleRefresh();
  });
  $("logout").addEventListener("click", async () => {
    await api("POST", "/proxy/auth/logout");
    showLogin();
  });
  $("detail-close").addEventListener("click", () => { $("detail").hidden = true; });
}

wire();
start();

// The wsbridge dashboard: reads a stats snapshot every second from the
// event stream GET /v1/stats:watch (Server-Sent Events), or, where it
// cannot (a gateway that wants a bearer token: EventSource sends no
// headers), by polling GET /v1/stats; keeps five minutes of history for
// the charts. No build step, no dependencies.
"use strict";

const HISTORY = 300; // seconds of history kept
const MIN_SPAN = 30; // seconds the time axis spans at least
const history = []; // {t, rps, p50, p99, inFlight, errorsPerSec}
let last = null; // previous snapshot, for rates
let token = sessionStorage.getItem("wsbridge-token") || "";

const $ = (id) => document.getElementById(id);
const num = (v) => Number(v || 0); // uint64 fields arrive as strings
const fmt = (v, digits = 0) => Number(v).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });

async function fetchStats() {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const resp = await fetch("/v1/stats", { headers, cache: "no-store" });
  if (resp.status === 401) {
    const t = window.prompt("This gateway requires a bearer token:");
    if (t) {
      token = t;
      sessionStorage.setItem("wsbridge-token", t);
    }
    throw new Error("unauthenticated");
  }
  if (!resp.ok) throw new Error("HTTP " + resp.status);
  return resp.json();
}

function update(s) {
  const now = Date.now();
  const state = (s.backendState || "BACKEND_STATE_DISCONNECTED").replace("BACKEND_STATE_", "").toLowerCase();
  $("backend-state").textContent = state;
  $("backend-state").className = "state " + state;
  $("backend-url").textContent = s.backendUrl || "";
  $("connects").textContent = fmt(num(s.backendConnects));
  $("reconnects").textContent = fmt(num(s.backendReconnects));
  $("dial-failures").textContent = fmt(num(s.dialFailures));
  $("requests").textContent = fmt(num(s.requestsHandled));
  $("rps").textContent = fmt(num(s.recentRequestsPerSecond), 1);
  $("in-flight").textContent = fmt(num(s.inFlight));
  const lat = s.latency || {};
  $("p50").textContent = fmt(num(lat.p50Ms), 2);
  $("p90").textContent = fmt(num(lat.p90Ms), 2);
  $("p99").textContent = fmt(num(lat.p99Ms), 2);
  $("window").textContent = num(lat.windowSeconds) || 60;
  $("clients").textContent = fmt(num(s.activeClients));
  $("clients-grpc").textContent = fmt(num(s.grpcClients));
  $("clients-http").textContent = fmt(num(s.httpClients));
  $("clients-ws").textContent = fmt(num(s.wsClients));
  $("errors").textContent = fmt(num(s.errors));
  $("timeouts").textContent = fmt(num(s.timeouts));
  $("backend-errors").textContent = fmt(num(s.backendErrors));
  $("rejected").textContent = fmt(num(s.rejected));

  let rps = 0, errorsPerSec = 0;
  if (last) {
    const dt = Math.max((num(s.uptimeMs) - num(last.uptimeMs)) / 1000, 0.001);
    rps = (num(s.requestsHandled) - num(last.requestsHandled)) / dt;
    errorsPerSec = (num(s.errors) - num(last.errors)) / dt;
  }
  last = s;
  history.push({ t: now, rps, p50: num(lat.p50Ms), p99: num(lat.p99Ms), inFlight: num(s.inFlight), errorsPerSec });
  while (history.length > HISTORY) history.shift();
  draw("chart-rps", [{ key: "rps", color: "#58a6ff" }]);
  draw("chart-latency", [{ key: "p50", color: "#58a6ff" }, { key: "p99", color: "#f0883e" }]);
  draw("chart-inflight", [{ key: "inFlight", color: "#3fb950" }]);
  draw("chart-errors", [{ key: "errorsPerSec", color: "#f85149" }]);
  $("updated").textContent = "Last update " + new Date(now).toLocaleTimeString() + ".";
  document.body.dataset.updates = String(num(document.body.dataset.updates) + 1);
}

// draw plots the history's series on a canvas, scaled to their maximum.
function draw(id, series) {
  const canvas = $(id);
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 28;
  ctx.clearRect(0, 0, w, h);
  let max = 0;
  for (const p of history) for (const s of series) max = Math.max(max, p[s.key]);
  max = max > 0 ? max * 1.1 : 1;
  ctx.strokeStyle = "#2a3240";
  ctx.fillStyle = "#8b95a5";
  ctx.font = "11px system-ui, sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = pad / 2 + (h - pad) * i / 4;
    ctx.beginPath(); ctx.moveTo(pad + 12, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText(fmt(max * (4 - i) / 4, max < 10 ? 1 : 0), 0, y + 4);
  }
  // The time axis spans the history gathered so far (at least MIN_SPAN
  // seconds), so a freshly opened page shows a chart rather than a sliver.
  const span = Math.min(Math.max(history.length, MIN_SPAN), HISTORY);
  const x = (i) => pad + 12 + (w - pad - 12) * i / (span - 1);
  const offset = span - history.length;
  ctx.fillText("-" + span + " s", pad + 12, h - 2);
  ctx.fillText("now", w - 22, h - 2);
  for (const s of series) {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    history.forEach((p, i) => {
      const y = pad / 2 + (h - pad) * (1 - p[s.key] / max);
      if (i === 0) ctx.moveTo(x(offset + i), y); else ctx.lineTo(x(offset + i), y);
    });
    ctx.stroke();
  }
  canvas.dataset.points = String(history.length);
  canvas.dataset.max = String(max);
}

// The table of every counter follows the stats declaration: a row per
// field, grouped by section, with its help as the tooltip.
let schema = null;

async function fetchSchema() {
  const resp = await fetch("/dashboard-schema.json", { cache: "no-store" });
  if (!resp.ok) throw new Error("schema: HTTP " + resp.status);
  schema = await resp.json();
  const table = $("all-stats");
  let section = "";
  for (const f of schema) {
    if (f.rows) {
      rowTables(f);
      continue;
    }
    if (f.section !== section) {
      section = f.section;
      const head = table.insertRow();
      head.className = "section";
      const th = document.createElement("th");
      th.colSpan = 2;
      th.textContent = section;
      head.appendChild(th);
    }
    const row = table.insertRow();
    const name = row.insertCell();
    name.textContent = f.title;
    name.title = f.help;
    const value = row.insertCell();
    value.id = "stat-" + f.json;
    value.className = "value";
  }
}

// A repeated field (backends) is a table of its own: a column per field
// of a row, a row per element, filled by updateRows.
function rowTables(f) {
  const table = $("rows-" + f.json);
  if (!table) return;
  const head = table.createTHead().insertRow();
  for (const col of f.rows) {
    const th = document.createElement("th");
    th.textContent = col.title;
    th.title = col.help;
    head.appendChild(th);
  }
  table.createTBody();
}

function updateRows(f, s) {
  const table = $("rows-" + f.json);
  if (!table) return;
  const rows = s[f.json] || [];
  const body = table.tBodies[0];
  while (body.rows.length > rows.length) body.deleteRow(-1);
  while (body.rows.length < rows.length) {
    const row = body.insertRow();
    for (const col of f.rows) row.insertCell().dataset.field = col.json;
  }
  rows.forEach((r, i) => {
    for (const cell of body.rows[i].cells) cell.textContent = show(r[cell.dataset.field]);
  });
  table.dataset.rows = String(rows.length);
}

function show(v) {
  if (v === undefined || v === null || v === "") return "–";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "object") {
    if ("p50Ms" in v || "count" in v) return "p50 " + fmt(num(v.p50Ms), 2) + " ms · p99 " + fmt(num(v.p99Ms), 2) + " ms · " + fmt(num(v.count)) + " calls";
    const parts = Object.entries(v).filter(([, n]) => num(n) !== 0).map(([k, n]) => k + " " + fmt(num(n)));
    return parts.length ? parts.join(", ") : "none";
  }
  if (typeof v === "string" && /^-?\d+(\.\d+)?$/.test(v)) return fmt(Number(v));
  if (typeof v === "number") return fmt(v, Number.isInteger(v) ? 0 : 1);
  const str = String(v);
  return str.startsWith("BACKEND_STATE_") ? str.slice("BACKEND_STATE_".length).toLowerCase() : str;
}

function updateAll(s) {
  if (!schema) return;
  for (const f of schema) {
    if (f.rows) {
      updateRows(f, s);
      continue;
    }
    const cell = $("stat-" + f.json);
    if (!cell) continue;
    // A field in milliseconds (uptime) reads better as a duration.
    cell.textContent = f.json.endsWith("Ms") ? fmt(num(s[f.json]) / 1000, 0) + " s" : show(s[f.json]);
  }
}

// render shows one snapshot.
async function render(s, transport) {
  if (!schema) await fetchSchema();
  update(s);
  updateAll(s);
  document.body.dataset.transport = transport;
  $("status").textContent = "live";
  $("status").className = "status live";
}

function down(message) {
  $("status").textContent = "gateway unreachable: " + message;
  $("status").className = "status down";
}

async function poll() {
  try {
    await render(await fetchStats(), "poll");
  } catch (e) {
    down(e.message);
  }
}

let polling = null;
function startPolling() {
  if (polling) return;
  poll();
  polling = setInterval(poll, 1000);
}

// stream reads snapshots as events. If the stream fails before its first
// event (a token is wanted, or no stream here), the page polls instead;
// after that, EventSource reconnects by itself.
function stream() {
  if (token || !window.EventSource) {
    startPolling();
    return;
  }
  const es = new EventSource("/v1/stats:watch?interval=1s");
  let got = false;
  es.addEventListener("stats", (ev) => {
    got = true;
    render(JSON.parse(ev.data), "sse").catch((e) => down(e.message));
  });
  es.onerror = () => {
    if (!got) {
      es.close();
      startPolling();
      return;
    }
    down("reconnecting");
  };
}

stream();

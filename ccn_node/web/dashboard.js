// ccn-node dashboard: fetches /api/v1/dashboard/data (admin token) and draws plain SVG charts.
// No framework, no build step, nothing loaded from elsewhere: the node works offline.
// After each draw, <body> carries data-ready="1" and data-*-points counts (read by the browser test).
"use strict";

const TOKEN_KEY = "ccn-dashboard-token";
const REFRESH_MS = 5000;
const SVG_NS = "http://www.w3.org/2000/svg";
let refreshes = 0;

function el(tag, attrs, parent, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  if (parent) parent.appendChild(node);
  return node;
}

function clear(svg) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
}

function box(svg) {
  const vb = svg.viewBox.baseVal;
  return { w: vb.width, h: vb.height };
}

function empty(svg, message) {
  const { w, h } = box(svg);
  el("text", { x: w / 2, y: h / 2, "text-anchor": "middle", class: "label" }, svg, message);
}

function fmtTime(t) {
  const d = new Date(t * 1000);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function fmtAge(s) {
  if (s === null || s === undefined || s < 0) return "never";
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

// A time-series chart: series = [{values, cls}], shared x = t (unix seconds). Returns points drawn.
function lineChart(svg, t, series, opts) {
  clear(svg);
  const { w, h } = box(svg);
  const pad = { l: 40, r: 12, t: 10, b: 24 };
  const idx = t.map((_, i) => i).filter((i) => t[i] !== null);
  if (idx.length === 0) {
    empty(svg, opts.emptyText);
    return 0;
  }
  const t0 = t[idx[0]];
  const tLast = t[idx[idx.length - 1]];
  const t1 = tLast > t0 ? tLast : t0 + 1;
  let yMax = opts.yMax;
  if (yMax === undefined) {
    yMax = 1;
    for (const s of series) for (const v of s.values) if (v !== null && v > yMax) yMax = v;
    if (opts.integer) yMax = Math.ceil(yMax / 4) * 4;  // whole-number grid lines
  }
  const x = (v) => pad.l + ((v - t0) / (t1 - t0)) * (w - pad.l - pad.r);
  const y = (v) => h - pad.b - (v / yMax) * (h - pad.t - pad.b);
  for (let k = 0; k <= 4; k++) {
    const v = (yMax * k) / 4;
    el("line", { x1: pad.l, x2: w - pad.r, y1: y(v), y2: y(v), class: "grid" }, svg);
    el("text", { x: pad.l - 6, y: y(v) + 4, "text-anchor": "end" }, svg, opts.integer ? Math.round(v) : v.toFixed(2));
  }
  el("text", { x: pad.l, y: h - 6 }, svg, fmtTime(t0));
  el("text", { x: w - pad.r, y: h - 6, "text-anchor": "end" }, svg, fmtTime(t1));
  let drawn = 0;
  for (const s of series) {
    const pts = idx.filter((i) => s.values[i] !== null && s.values[i] !== undefined)
      .map((i) => `${x(t[i]).toFixed(1)},${y(s.values[i]).toFixed(1)}`);
    if (pts.length === 0) continue;
    if (s.area) {
      el("polygon", { points: `${x(t0)},${y(0)} ${pts.join(" ")} ${x(t[idx[idx.length - 1]])},${y(0)}`, class: s.area }, svg);
    }
    el("polyline", { points: pts.join(" "), class: s.cls }, svg);
    if (pts.length === 1) {
      const [px, py] = pts[0].split(",");
      el("circle", { cx: px, cy: py, r: 3, class: s.dot }, svg);
    }
    drawn += pts.length;
  }
  return drawn;
}

// 16 axes, values in [0, 1]; returns the number of axes drawn.
function radar(svg, dims, vector) {
  clear(svg);
  if (!vector || vector.length !== dims.length) {
    empty(svg, "no character measured yet");
    return 0;
  }
  const { w, h } = box(svg);
  const cx = w / 2;
  const cy = h / 2;
  const r = Math.min(w, h) / 2 - 80;
  const n = dims.length;
  const at = (i, v) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / n;
    return [cx + Math.cos(a) * r * v, cy + Math.sin(a) * r * v];
  };
  for (const ring of [0.25, 0.5, 0.75, 1]) {
    el("polygon", { points: dims.map((_, i) => at(i, ring).join(",")).join(" "), class: "grid", fill: "none" }, svg);
  }
  dims.forEach((name, i) => {
    const [x2, y2] = at(i, 1);
    el("line", { x1: cx, y1: cy, x2, y2, class: "grid" }, svg);
    const [lx, ly] = at(i, 1.16);
    const anchor = Math.abs(lx - cx) < 8 ? "middle" : lx > cx ? "start" : "end";
    el("text", { x: lx, y: ly + 4, "text-anchor": anchor }, svg, name);
  });
  const clamp = (v) => Math.max(0, Math.min(1, Number(v) || 0));
  el("polygon", { points: vector.map((v, i) => at(i, clamp(v)).join(",")).join(" "), class: "radar" }, svg);
  vector.forEach((v, i) => {
    const [px, py] = at(i, clamp(v));
    el("circle", { cx: px, cy: py, r: 2.5, class: "ok" }, svg).appendChild(
      el("title", {}, null, `${dims[i]}: ${Number(v).toFixed(3)}`));
  });
  return n;
}

// This node in the middle, peers around it; edge colour = connected. Returns nodes drawn.
function cluster(svg, c) {
  clear(svg);
  const { w, h } = box(svg);
  const cx = w / 2;
  const cy = h / 2 - 6;
  const peers = c.peers || [];
  const roleCls = c.role === "leader" ? "ok" : c.role === "follower" ? "warn" : "bad";
  peers.forEach((p, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(peers.length, 1);
    const px = cx + Math.cos(a) * 92;
    const py = cy + Math.sin(a) * 80;
    el("line", { x1: cx, y1: cy, x2: px, y2: py, class: p.connected ? "edge-ok" : "edge-bad" }, svg);
    el("circle", { cx: px, cy: py, r: 14, class: p.connected ? "ok" : "bad" }, svg);
    el("text", { x: px, y: py + 28, "text-anchor": "middle" }, svg, p.address + (p.lag ? ` (lag ${p.lag})` : ""));
  });
  el("circle", { cx, cy, r: 26, class: roleCls }, svg);
  el("text", { x: cx, y: cy + 4, "text-anchor": "middle", class: "label" }, svg, c.role);
  el("text", { x: 8, y: h - 8 }, svg,
     `${c.kind} log · term ${c.term} · commit ${c.commit_index} · applied ${c.applied_index}` +
     (c.has_quorum ? " · quorum" : " · NO QUORUM"));
  return 1 + peers.length;
}

// Ledger height as a bar (sealed into blocks vs. pending), witness and fork badges, backup age gauge.
function ledger(svg, led, backupAge, backupInterval) {
  clear(svg);
  const { w } = box(svg);
  const size = led.size || 0;
  const sealed = led.sealed_size || 0;
  el("text", { x: 12, y: 30, class: "big" }, svg, `${size.toLocaleString()} entries`);
  el("text", { x: 12, y: 48 }, svg, `${led.blocks || 0} blocks sealed`);
  const bw = w - 24;
  el("rect", { x: 12, y: 60, width: bw, height: 16, rx: 3, class: "muted" }, svg);
  el("rect", { x: 12, y: 60, width: size ? (bw * Math.min(sealed, size)) / size : 0, height: 16, rx: 3, class: "ok" }, svg);
  el("text", { x: 12, y: 92 }, svg, `sealed ${sealed.toLocaleString()} / pending ${Math.max(0, size - sealed)}`);
  const wit = led.witness || {};
  const witnesses = Number(wit.witnesses || 0);
  const fork = Number(wit.fork_detected || 0) > 0;
  el("circle", { cx: 22, cy: 118, r: 8, class: fork ? "bad" : witnesses > 0 ? "ok" : "warn" }, svg);
  el("text", { x: 38, y: 122, class: "label" }, svg,
     fork ? "FORK DETECTED" : witnesses > 0 ? `${witnesses} witness(es), no fork` : "no witnesses configured");
  // backup age gauge: full bar = twice the backup interval
  const age = backupAge === null || backupAge === undefined ? -1 : backupAge;
  const span = 2 * backupInterval;
  const frac = age < 0 ? 1 : Math.min(age / span, 1);
  const cls = age < 0 ? "bad" : age <= backupInterval ? "ok" : age <= span ? "warn" : "bad";
  el("text", { x: 12, y: 166, class: "label" }, svg, `last backup: ${fmtAge(age)}${age < 0 ? "" : " ago"}`);
  el("rect", { x: 12, y: 176, width: bw, height: 16, rx: 3, class: "muted" }, svg);
  el("rect", { x: 12, y: 176, width: bw * frac, height: 16, rx: 3, class: cls }, svg);
  el("line", { x1: 12 + bw / 2, x2: 12 + bw / 2, y1: 172, y2: 196, class: "grid" }, svg);
  el("text", { x: 12 + bw / 2, y: 210, "text-anchor": "middle" }, svg, `interval ${fmtAge(backupInterval)}`);
  return 1;
}

function setStatus(text, isError) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.classList.toggle("error", Boolean(isError));
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function askForToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById("token-form").hidden = false;
  setStatus(message, true);
}

function draw(d) {
  document.getElementById("node-name").textContent = d.node || "";
  const b = document.body.dataset;
  b.cccPoints = lineChart(document.getElementById("chart-ccc"), d.series.t,
    [{ values: d.series.ccc, cls: "line-ccc", dot: "ok" }, { values: d.series.drift, cls: "line-drift", dot: "bad" }],
    { yMax: 1, emptyText: "no turns measured yet" });
  b.instancePoints = lineChart(document.getElementById("chart-instances"), d.instances.t,
    [{ values: d.instances.live, cls: "line-inst", area: "area-inst", dot: "ok" }],
    { integer: true, emptyText: "no instances yet" });
  const ch = d.character || {};
  document.getElementById("character-source").textContent = ch.source ? `— ${ch.source}` : "";
  b.radarAxes = radar(document.getElementById("chart-radar"), ch.dimensions || [], ch.vector);
  const c = d.cluster || {};
  document.getElementById("cluster-caption").textContent = `— ${d.instances.active} active instance(s)`;
  b.clusterNodes = cluster(document.getElementById("chart-cluster"), c);
  b.ledgerDrawn = ledger(document.getElementById("chart-ledger"), d.ledger || {}, d.backup_age_s,
    d.backup_interval_s || 6 * 3600);
  refreshes += 1;
  b.refreshes = refreshes;
  b.ready = "1";
  setStatus(`updated ${new Date().toLocaleTimeString()}`, false);
}

async function refresh() {
  const t = token();
  if (!t) {
    askForToken("an admin token is needed to show the data");
    return;
  }
  let resp;
  try {
    resp = await fetch("/api/v1/dashboard/data", { headers: { Authorization: `Bearer ${t}` }, cache: "no-store" });
  } catch (err) {
    setStatus(`node unreachable: ${err.message}`, true);
    return;
  }
  if (resp.status === 401 || resp.status === 403) {
    askForToken(resp.status === 401 ? "token refused (expired or wrong key)" : "this token is not an admin token");
    return;
  }
  if (!resp.ok) {
    setStatus(`data: HTTP ${resp.status}`, true);
    return;
  }
  draw(await resp.json());
}

function start() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);  // keep it out of history and bookmarks
  }
  document.getElementById("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = document.getElementById("token-input");
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    input.value = "";
    document.getElementById("token-form").hidden = true;
    refresh();
  });
  refresh();
  setInterval(refresh, REFRESH_MS);
}

start();

// The live page of `velo serve`: polls the batch API once a second and draws what it says.
// No framework, no build step, no CDN: this file is all there is.
"use strict";

const POLL_MS = 1000;
const HISTORY = 120; // points on the throughput chart (two minutes)
const history = []; // [time, rows/s across running batches]
let lastRows = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.round((seconds % 3600) / 60)} min`;
}

function state(b) {
  if (!b.finished) return b.running ? "running" : "queued";
  return b.failed ? "failed" : "done";
}

function bar(b) {
  const total = Math.max(b.total, 1);
  const wrap = el("span", { class: "bar", title: `${b.done + b.failed} of ${b.total} files` });
  wrap.append(el("span", { style: `width:${(100 * b.done) / total}%; float:left` }));
  wrap.append(el("span", { class: "failed", style: `width:${(100 * b.failed) / total}%; float:left` }));
  return wrap;
}

function drawBatches(batches) {
  const body = document.querySelector("#batches tbody");
  body.replaceChildren(
    ...batches.map((b) =>
      el(
        "tr",
        { "data-batch": b.id, "data-state": state(b) },
        el("td", {}, b.id),
        el("td", {}, b.source),
        el("td", {}, bar(b), el("span", { class: `status ${state(b)}` }, state(b))),
        el("td", { class: "num" }, `${b.done}/${b.total}`),
        el("td", { class: "num" }, b.failed),
        el("td", { class: "num" }, b.rows.toLocaleString()),
        el("td", { class: "num" }, Math.round(b.rows_per_s).toLocaleString()),
        el("td", { class: "num" }, b.finished ? "–" : duration(b.eta_seconds)),
        el("td", {}, b.report ? el("a", { class: "report", href: b.report, target: "_blank" }, "report") : "–"),
      ),
    ),
  );
  const failures = batches.flatMap((b) => (b.failures || []).map((f) => ({ batch: b.id, ...f })));
  document.querySelector("#failures").replaceChildren(
    ...(failures.length
      ? failures.map((f) => el("li", { "data-file": f.file }, `${f.batch}  ${f.error}`))
      : [el("li", { class: "muted" }, "none")]),
  );
}

function drawWorkers(workers) {
  const body = document.querySelector("#workers tbody");
  body.replaceChildren(
    ...(workers.length
      ? workers.map((w) => el("tr", {}, el("td", {}, w.name), el("td", {}, w.host), el("td", {}, w.state), el("td", {}, w.file || "–")))
      : [el("tr", {}, el("td", { colspan: 4, class: "muted" }, "no worker alive"))]),
  );
}

function drawChart() {
  const canvas = document.getElementById("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 30;
  ctx.clearRect(0, 0, w, h);
  const top = Math.max(1, ...history.map((p) => p[1]));
  ctx.strokeStyle = "#e3e6ea";
  ctx.fillStyle = "#9aa3b0";
  ctx.font = "11px system-ui";
  ctx.beginPath(); ctx.moveTo(pad, h - pad / 2); ctx.lineTo(w, h - pad / 2); ctx.stroke();
  ctx.fillText(`${Math.round(top).toLocaleString()} rows/s`, 2, 12);
  if (history.length < 2) return;
  ctx.strokeStyle = "#2f8f5b";
  ctx.lineWidth = 2;
  ctx.beginPath();
  history.forEach(([, v], i) => {
    const x = pad + ((w - pad) * i) / (HISTORY - 1);
    const y = h - pad / 2 - ((h - pad) * v) / top;
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

function record(batches) {
  const now = Date.now() / 1000;
  const rows = batches.reduce((sum, b) => sum + b.rows, 0);
  if (lastRows !== null) {
    const [t0, r0] = lastRows;
    history.push([now, Math.max(0, (rows - r0) / Math.max(now - t0, 1e-3))]);
    if (history.length > HISTORY) history.shift();
  }
  lastRows = [now, rows];
}

async function refresh() {
  try {
    const answer = await fetch("/v1/batches", { headers: { Accept: "application/json" } });
    const notice = document.getElementById("no-redis");
    if (answer.status === 503) {
      notice.hidden = false;
      notice.textContent = (await answer.json()).error || "Redis unavailable";
    } else if (answer.ok) {
      notice.hidden = true;
      const data = await answer.json();
      drawBatches(data.batches);
      drawWorkers(data.workers);
      record(data.batches);
      drawChart();
    }
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    document.getElementById("updated").textContent = `cannot reach the server (${e})`;
  }
}

async function model() {
  try {
    const info = await (await fetch("/info")).json();
    document.getElementById("model").textContent = `model: ${info.model} · ${info.type} · sha256 ${String(info.sha256).slice(0, 12)}`;
  } catch (e) {
    /* the next poll says the server is gone */
  }
}

model();
refresh();
setInterval(refresh, POLL_MS);
setInterval(model, 10 * POLL_MS);

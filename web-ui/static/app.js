// drover's dashboard: live progress of a deployment by server-sent events (the page works
// without it, as plain HTML), and confirmation of destructive forms.
"use strict";

document.addEventListener("submit", (ev) => {
  const msg = ev.target.getAttribute && ev.target.getAttribute("data-confirm");
  if (msg && !window.confirm(msg)) ev.preventDefault();
});

function fmtBytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = Math.max(0, n), i = 0;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${Math.max(0, n)} B` : `${v.toFixed(1)} ${u[i]}`;
}
function fmtRate(bps) {
  const v = Math.max(0, bps);
  if (v >= 1e9) return `${(v / 1e9).toFixed(2)} Gbit/s`;
  if (v >= 1e6) return `${(v / 1e6).toFixed(1)} Mbit/s`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(0)} kbit/s`;
  return `${v.toFixed(0)} bit/s`;
}
function fmtDuration(s) {
  if (s === null || s === undefined) return "—";
  s = Math.max(0, Math.round(s));
  if (s >= 3600) return `${Math.floor(s / 3600)} h ${String(Math.floor(s % 3600 / 60)).padStart(2, "0")} min`;
  if (s >= 60) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${s} s`;
}
function fmtTime(ms) {
  if (!ms) return "—";
  const d = new Date(ms), p = (x) => String(x).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}
function setText(el, text) { if (el && el.textContent !== text) el.textContent = text; }
function setState(el, state) { if (el) { setText(el, state); el.className = `state state-${state}`; } }

function showDeployment(d) {
  const pct = d.bytes_total > 0 ? Math.floor(1000 * d.bytes_done / d.bytes_total) / 10
    : (d.state === "waiting" || d.state === "running" ? 0 : 100);
  setState(document.getElementById("d-state"), d.state);
  const bar = document.getElementById("d-progress");
  if (bar) { bar.value = pct; bar.setAttribute("aria-label", `all machines: ${pct} %`); }
  setText(document.getElementById("d-percent"), `${pct} %`);
  setText(document.getElementById("d-rate"), fmtRate(d.rate_bps));
  setText(document.getElementById("d-states"),
    Object.entries(d.task_states || {}).map(([s, n]) => `${n} ${s}`).join(", "));
  setText(document.getElementById("d-started"), fmtTime(d.started_ms));
  setText(document.getElementById("d-finished"), fmtTime(d.finished_ms));
  const rows = document.getElementById("tasks");
  for (const t of d.tasks || []) {
    const row = rows && rows.querySelector(`tr[data-mac="${CSS.escape(t.mac)}"]`);
    if (!row) continue;
    const f = (name) => row.querySelector(`[data-field="${name}"]`);
    const label = t.name || t.mac;
    setState(f("state"), t.state);
    setText(f("reason"), t.reason || "");
    const p = f("progress");
    if (p) { p.value = t.percent; p.setAttribute("aria-label", `${label}: ${t.percent} %`); }
    setText(f("percent"), `${t.percent} %`);
    setText(f("done"), `${fmtBytes(t.bytes_done)} of ${fmtBytes(t.bytes_total)}`);
    setText(f("rate"), fmtRate(t.rate_bps));
    setText(f("eta"), fmtDuration(t.eta_seconds));
  }
  const over = !(d.state === "waiting" || d.state === "running");
  const start = document.getElementById("d-start");
  if (start && d.state !== "waiting") start.hidden = true;
  const buttons = document.getElementById("d-buttons");
  if (buttons && over) buttons.hidden = true;
  return over;
}

function follow(el) {
  const status = document.getElementById("live-status");
  const say = (text) => { if (status) { status.hidden = !text; setText(status, text || ""); } };
  let es = null, retry = 1000;
  const open = () => {
    es = new EventSource(`/deployments/${encodeURIComponent(el.dataset.id)}/events`);
    es.addEventListener("deployment", (ev) => {
      retry = 1000;
      say("");
      let d;
      try { d = JSON.parse(ev.data); } catch (_) { return; }
      if (showDeployment(d)) { es.close(); es = null; }
    });
    es.onerror = () => {
      // The browser retries by itself while the stream is merely interrupted; a closed one
      // (server restarted, session over) is opened again here, waiting longer each time.
      say("Live updates interrupted: reconnecting…");
      if (es && es.readyState === EventSource.CLOSED) {
        es = null;
        setTimeout(open, retry);
        retry = Math.min(retry * 2, 30000);
      }
    };
  };
  open();
}

document.addEventListener("DOMContentLoaded", () => {
  const el = document.getElementById("deployment");
  if (el && el.dataset.active === "true" && "EventSource" in window) follow(el);
});

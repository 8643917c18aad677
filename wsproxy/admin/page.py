"""The stats page at ``/``: pools and members, refreshed every 2 s from ``/api/pools``.

One self-contained HTML document (inline CSS and script, no external assets), so it works
on an air-gapped admin port. Values are inserted with ``textContent``, never as HTML.
"""

STATS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>wsproxy</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .2em; }
h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
#meta { color: #666; }
table { border-collapse: collapse; min-width: 40em; }
th, td { padding: .25em .8em; border-bottom: 1px solid #ddd; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.up { color: #17803d; } .down { color: #c0262d; } .draining { color: #b26b00; } .slow_start { color: #2457b3; }
button { font-size: .85em; }
#error { color: #c0262d; }
</style>
</head>
<body>
<h1>wsproxy</h1>
<div id="meta">loading&hellip;</div>
<div id="error"></div>
<div id="pools"></div>
<p><a href="/metrics">/metrics</a> &middot; <a href="/api/pools">/api/pools</a> &middot;
<a href="/api/status">/api/status</a></p>
<script>
"use strict";
const COLUMNS = ["member", "state", "conns", "weight", "health", "rtt", ""];

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

async function act(pool, addr, action) {
  const url = "/api/pools/" + encodeURIComponent(pool) + "/members/" + encodeURIComponent(addr) + "/" + action;
  const res = await fetch(url, {method: "POST"});
  if (!res.ok) document.getElementById("error").textContent = action + " failed: " + (await res.text());
  refresh();
}

function render(data) {
  document.getElementById("meta").textContent =
    "config generation " + data.generation + " \\u00b7 updated " + new Date().toLocaleTimeString();
  const root = document.getElementById("pools");
  root.textContent = "";
  for (const [name, pool] of Object.entries(data.pools)) {
    const h = document.createElement("h2");
    h.textContent = "pool " + name + " (" + pool.balance + ")";
    root.appendChild(h);
    const table = document.createElement("table");
    const head = table.insertRow();
    for (const c of COLUMNS) { const th = document.createElement("th"); th.textContent = c; head.appendChild(th); }
    for (const m of pool.members) {
      const row = table.insertRow();
      cell(row, m.addr);
      cell(row, m.state, m.state);
      cell(row, String(m.conns), "n");
      cell(row, String(m.weight), "n");
      cell(row, m.health === undefined ? "-" : m.health, m.health);
      cell(row, m.rtt_ms === null || m.rtt_ms === undefined ? "-" : m.rtt_ms + " ms", "n");
      const td = cell(row, "");
      const b = document.createElement("button");
      const draining = m.state === "draining";
      b.textContent = draining ? "enable" : "drain";
      b.onclick = () => act(name, m.addr, draining ? "enable" : "drain");
      td.appendChild(b);
    }
    root.appendChild(table);
  }
}

async function refresh() {
  try {
    const res = await fetch("/api/pools", {cache: "no-store"});
    if (!res.ok) throw new Error(res.status + " " + res.statusText);
    render(await res.json());
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = "cannot read /api/pools: " + e.message;
  }
}

refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"""

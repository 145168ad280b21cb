// The channel overview: KPIs, per-minute charts and one row per channel, refreshed in place.

import { $, h, setText } from "./dom.js";
import { fmtAge, fmtMs, fmtNum, fmtTime } from "./format.js";
import { colorIndex, colorOf, stackedBars, swatch } from "./charts.js";
import { alive, api, can, state } from "./session.js";
import { errorBox, toast } from "./ui.js";

const REFRESH_MS = 5000; // the channel overview's auto-refresh period

const CHANNEL_COLUMNS = [
  { key: "name", label: "Channel", cls: "mono strong", value: (c) => c.name },
  { key: "source", label: "Source", cls: "mono dim", value: (c) => c.source },
  { key: "destinations", label: "Destinations", cls: "dim", value: (c) => (c.destinations || []).join(", ") },
  { key: "state", label: "State" },
  { key: "total", label: "Received", num: true, value: (c) => fmtNum(c.total) },
  { key: "filtered", label: "Filtered", num: true, value: (c) => fmtNum((c.counts || {}).FILTERED || 0) },
  { key: "queued", label: "Queued", num: true, value: (c) => fmtNum(c.queued), flag: (c) => c.queued > 0 && "busy" },
  { key: "warnings", label: "Warnings", num: true, value: (c) => fmtNum(c.warnings), flag: (c) => c.warnings > 0 && "warn" },
  { key: "errors", label: "Errors", num: true, value: (c) => fmtNum(c.errors), flag: (c) => c.errors > 0 && "bad" },
  { key: "sent", label: "Sent", num: true, value: (c) => fmtNum((c.counts || {}).SENT || 0) },
  { key: "per_minute", label: "Recv/min", num: true, value: (c) => fmtNum((c.last_minute || {}).received) },
  {
    key: "errors_per_minute", label: "Err/min", num: true,
    value: (c) => fmtNum((c.last_minute || {}).errors), flag: (c) => (c.last_minute || {}).errors > 0 && "bad",
  },
  { key: "p50", label: "ACK p50", num: true, value: (c) => (c.ack_latency_ms ? fmtMs(c.ack_latency_ms.p50) : "–") },
  { key: "p99", label: "ACK p99", num: true, value: (c) => (c.ack_latency_ms ? fmtMs(c.ack_latency_ms.p99) : "–") },
  {
    key: "oldest", label: "Oldest queued", num: true, value: (c) => fmtAge(c.oldest_queued_seconds),
    flag: (c) => c.oldest_queued_seconds > 300 && "warn",
  },
];

export function pageChannels(view, _route, gen) {
  const kpis = h("section", { class: "kpis", id: "kpis" });
  const charts = h("section", { class: "charts" },
    h("div", { class: "panel chart-panel" }, h("h2", {}, "Received per minute"), h("div", { class: "chart", id: "chart-received" })),
    h("div", { class: "panel chart-panel" }, h("h2", {}, "Errors per minute"), h("div", { class: "chart", id: "chart-errors" })),
  );
  const legend = h("div", { class: "legend", id: "legend" });
  const columns = CHANNEL_COLUMNS.concat(can("pause") ? [{ key: "actions", label: "" }] : []);
  const tbody = h("tbody");
  const table = h("table", { class: "grid channels", id: "channels" },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.num ? "num" : "" }, c.label)))),
    tbody);
  const status = h("span", { class: "muted small", id: "refreshed" });
  const problem = h("div");
  view.append(
    h("div", { class: "page-head" }, h("h1", {}, "Channels"), status),
    problem, kpis, charts, legend,
    h("div", { class: "panel table-panel" }, table),
  );
  const rows = new Map();

  function paintRow(c) {
    let row = rows.get(c.name);
    if (!row) {
      const cells = {};
      const tr = h("tr", { dataset: { channel: c.name } },
        columns.map((col) => (cells[col.key] = h("td", { class: [col.cls, col.num ? "num" : ""].filter(Boolean).join(" "), dataset: { col: col.key } }))));
      row = { tr, cells, paused: null, enabled: null };
      rows.set(c.name, row);
    }
    for (const col of columns) {
      if (!col.value) continue;
      const cell = row.cells[col.key];
      const text = col.value(c);
      setText(cell, text);
      if (col.num) cell.classList.toggle("zero", text === "0" || text === "–"); // dimmed: what is not 0 stands out
      const flag = col.flag ? col.flag(c) : null;
      cell.classList.toggle("busy", flag === "busy");
      cell.classList.toggle("warn", flag === "warn");
      cell.classList.toggle("bad", flag === "bad");
    }
    if (row.paused !== c.paused || row.enabled !== c.enabled) {
      row.paused = c.paused;
      row.enabled = c.enabled;
      const label = c.enabled === false ? "disabled" : c.paused ? "paused" : "running";
      row.cells.state.replaceChildren(h("span", { class: `badge state-${label}` }, label));
      if (row.cells.actions) {
        row.cells.actions.replaceChildren(
          c.enabled === false ? "" : c.paused
            ? h("button", { type: "button", class: "btn btn-small", dataset: { action: "resume" }, onclick: () => setPaused(c.name, false) }, "Resume")
            : h("button", { type: "button", class: "btn btn-small", dataset: { action: "pause" }, onclick: () => setPaused(c.name, true) }, "Pause"),
        );
      }
    }
    return row.tr;
  }

  async function setPaused(name, paused) {
    try {
      const entry = await api(`/api/channels/${encodeURIComponent(name)}/${paused ? "pause" : "resume"}`, { method: "POST" });
      if (!alive(gen)) return;
      if (entry && entry.name) paintRow(entry);
      toast(`${name} ${paused ? "paused: messages wait in the store" : "resumed"}`);
    } catch (err) {
      if (err.status !== 401) toast(`${name}: ${err.message}`, "error");
    }
  }

  async function refresh() {
    try {
      const [channels, series] = await Promise.all([api("/api/channels"), api("/api/stats/series", { params: { minutes: 60 } })]);
      if (!alive(gen)) return;
      problem.replaceChildren();
      for (const c of channels) colorOf(c.name);
      const order = channels.map(paintRow);
      if (order.length !== tbody.children.length || order.some((tr, i) => tbody.children[i] !== tr)) {
        tbody.replaceChildren(...order); // only when channels came or went: moving rows would drop focus
      }
      paintKpis(kpis, channels, series);
      paintCharts(series, legend);
      setText(status, `updated ${fmtTime(new Date().toISOString()).slice(11)} · every ${REFRESH_MS / 1000} s`);
    } catch (err) {
      if (!alive(gen) || err.status === 401) return;
      problem.replaceChildren(errorBox(err));
    }
    if (alive(gen)) state.timer = setTimeout(refresh, REFRESH_MS);
  }
  refresh();
}

function paintKpis(box, channels, series) {
  const sum = (list) => list.reduce((a, b) => a + (b || 0), 0);
  const all = Object.values(series.channels || {});
  const received = sum(all.map((c) => sum(c.received)));
  const errors = sum(all.map((c) => sum(c.errors)));
  const queued = sum(channels.map((c) => c.queued));
  const oldest = Math.max(-1, ...channels.map((c) => c.oldest_queued_seconds ?? -1));
  const paused = channels.filter((c) => c.paused).length;
  const kpi = (key, label, value, flag) =>
    h("div", { class: `kpi ${flag || ""}`, dataset: { kpi: key } }, h("div", { class: "kpi-value" }, value), h("div", { class: "kpi-label" }, label));
  box.replaceChildren(
    kpi("received", "received, last 60 min", fmtNum(received)),
    kpi("errors", "errors, last 60 min", fmtNum(errors), errors ? "bad" : ""),
    kpi("queued", "queued now", fmtNum(queued), queued ? "busy" : ""),
    kpi("oldest", "oldest queued", oldest < 0 ? "–" : fmtAge(oldest), oldest > 300 ? "warn" : ""),
    kpi("channels", paused ? `channels running · ${paused} paused` : "channels running", `${channels.length - paused} / ${channels.length}`, paused ? "warn" : ""),
  );
}

function paintCharts(series, legend) {
  const minutes = series.minutes || [];
  const names = Object.keys(series.channels || {}).sort((a, b) => colorIndex(a) - colorIndex(b));
  const active = (key) => names.filter((n) => (series.channels[n][key] || []).some((v) => v > 0));
  const pick = (key) => active(key).map((n) => ({ name: n, color: colorOf(n), values: series.channels[n][key] || [] }));
  $("#chart-received").replaceChildren(stackedBars({ minutes, series: pick("received"), id: "received", noun: "received" }));
  $("#chart-errors").replaceChildren(stackedBars({ minutes, series: pick("errors"), id: "errors", noun: "errors" }));
  const shown = [...new Set([...active("received"), ...active("errors")])];
  legend.replaceChildren(
    ...(shown.length ? shown : []).map((n) =>
      h("span", { class: "legend-item" }, swatch(colorOf(n)), n)),
  );
}

// How times, ages, latencies and counts read on the page.

import { h } from "./dom.js";

/** A Date from the API's ISO text; a time without offset is UTC (how the store keeps it). */
function parseTime(iso) {
  if (!iso) return null;
  const text = /[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : iso + "Z";
  const d = new Date(text);
  return Number.isNaN(d.getTime()) ? null : d;
}

const pad = (n) => String(n).padStart(2, "0");

export function fmtTime(iso) {
  const d = parseTime(iso);
  if (!d) return iso || "";
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtClock(iso) {
  const d = parseTime(iso);
  return d ? `${pad(d.getHours())}:${pad(d.getMinutes())}` : "";
}

/** "12 s", "3 min", "2 h 5 min", "3 d 4 h": how long something has waited. */
export function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const sec = Math.max(0, Math.round(seconds));
  if (sec < 60) return `${sec} s`;
  const min = Math.floor(sec / 60);
  if (min < 60) return `${min} min`;
  const hours = Math.floor(min / 60);
  if (hours < 48) return min % 60 ? `${hours} h ${min % 60} min` : `${hours} h`;
  const days = Math.floor(hours / 24);
  return hours % 24 ? `${days} d ${hours % 24} h` : `${days} d`;
}

/** Milliseconds as an operator reads them: "0.8 ms", "42 ms", "1.3 s". */
export function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(1)} s`;
}

export const fmtNum = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));

export function messageKind(m) {
  if (!m.message_type) return "";
  return m.trigger && !m.message_type.includes("^") ? `${m.message_type}^${m.trigger}` : m.message_type;
}

/** A datetime-local input's value ("2026-11-30T10:15", local time) as ISO UTC for the API. */
export function localToIso(value) {
  if (!value) return "";
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}

export function statusBadge(status) {
  return h("span", { class: `badge st-${String(status || "").toLowerCase()}` }, status || "?");
}

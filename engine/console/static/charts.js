// Charts drawn as inline SVG by our own small code (no library, no network).

import { h, s } from "./dom.js";
import { fmtClock } from "./format.js";

const PALETTE = [
  "#3274d9", "#e0752d", "#37872d", "#c4162a", "#8f3bb8", "#0a8fa8", "#b8860b", "#e05297",
  "#5d6d7e", "#6a9a1f", "#1f4e9c", "#a0522d", "#2e8b57", "#d97706", "#7c3aed", "#0f766e",
];
const colors = new Map(); // channel name -> colour, stable while the page lives

/** The colour of a channel in every chart and legend. */
export function colorOf(name) {
  if (!colors.has(name)) colors.set(name, PALETTE[colors.size % PALETTE.length]);
  return colors.get(name);
}

/** A legend's colour square (styled through CSSOM: the page's CSP refuses style attributes). */
export function swatch(color) {
  const el = h("span", { class: "swatch" });
  el.style.background = color;
  return el;
}

export function colorIndex(name) {
  return [...colors.keys()].indexOf(name);
}

/** A step for axis ticks: 1, 2 or 5 times a power of ten, giving about `count` ticks up to `max`. */
function niceStep(max, count = 4) {
  const raw = Math.max(max, 1) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((v) => v >= raw);
  return Math.max(1, step);
}

/**
 * Per-minute counts as stacked bars (one colour per channel), drawn as inline SVG. Each bar is a
 * rect.bar with data-channel / data-value and a <title> for the hover tooltip.
 */
export function stackedBars({ minutes, series, id, noun }) {
  const W = 640, H = 170, L = 34, R = 6, T = 8, B = 20;
  const n = minutes.length || 60;
  const totals = Array.from({ length: n }, (_, i) => series.reduce((a, sr) => a + (sr.values[i] || 0), 0));
  const max = Math.max(0, ...totals);
  const step = niceStep(max);
  const top = Math.max(step, Math.ceil(max / step) * step);
  const y = (v) => T + (H - T - B) * (1 - v / top);
  const band = (W - L - R) / n;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", id: `svg-${id}`, role: "img", "aria-label": `${noun} per minute, last ${n} minutes` });
  for (let v = 0; v <= top; v += step) {
    svg.append(
      s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: v === 0 ? "axis" : "gridline" }),
      s("text", { x: L - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" }, String(v)),
    );
  }
  for (let i = 0; i < n; i += 1) {
    if ((n - 1 - i) % 10 === 0 && minutes[i]) {
      const x = L + band * (i + 0.5);
      const last = i === n - 1; // the newest minute sits at the right edge: its label ends there
      svg.append(
        s("line", { x1: x, x2: x, y1: H - B, y2: H - B + 4, class: "axis" }),
        s("text", { x: last ? W - R : x, y: H - 5, class: "tick", "text-anchor": last ? "end" : "middle" }, fmtClock(minutes[i])),
      );
    }
  }
  const bars = s("g", { class: "bars" });
  for (let i = 0; i < n; i += 1) {
    let base = 0;
    for (const sr of series) {
      const v = sr.values[i] || 0;
      if (!v) continue;
      const y0 = y(base), y1 = y(base + v);
      bars.append(s("rect", {
        class: "bar", x: (L + band * i + band * 0.12).toFixed(1), width: (band * 0.76).toFixed(1),
        y: y1.toFixed(1), height: Math.max(1, y0 - y1).toFixed(1), fill: sr.color,
        "data-channel": sr.name, "data-value": v, "data-minute": minutes[i] || "",
      }, s("title", {}, `${sr.name} · ${fmtClock(minutes[i])} · ${v} ${noun}`)));
      base += v;
    }
  }
  svg.append(bars);
  if (!max) {
    svg.append(s("text", { x: (L + W - R) / 2, y: (T + H - B) / 2, class: "empty", "text-anchor": "middle" }, `no ${noun} in the last ${n} minutes`));
  }
  return svg;
}

// uPlot helpers: charts that follow their container's width, a logarithmic-axis-safe data
// transform, vertical event markers, shaded step ranges, and hidden band-edge series.
/* global uPlot */
import { fmt, h } from "./common.js";

export const PALETTE = ["#2f5bd3", "#d1495b", "#2e9e5b", "#c77d12", "#7a4cc2", "#1a9bb0", "#8a5a44", "#d35fb7", "#5c6b7a", "#99a31c"];
export const EVENT_COLORS = { entrance: "#2e9e5b", exit: "#c8333b", return: "#2f7dd3", divergence: "#000000" };

/** Values a logarithmic axis can show: v > 0 stays, anything else (0, negative, null) becomes a gap. */
export function positive(values) {
  return values.map((v) => (typeof v === "number" && v > 0 ? v : null));
}

export function rgba(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255},${(n >> 8) & 255},${n & 255},${alpha})`;
}

const valueFmt = (_u, v) => (v === null || v === undefined ? "—" : fmt(v));

/** Grid lines at 0 and whole powers of ten only: a log axis' 2..9 lines turn a plot grey. */
function decades(_u, splits) {
  return splits.map((v) => (v === 0 || (v !== null && Math.abs(Math.log10(Math.abs(v)) % 1) < 1e-9) ? v : null));
}

const grid = (thin) => (thin ? { stroke: "#eceff4", filter: decades } : { stroke: "#eceff4" });

export function xAxis(label, log) {
  return { label, scale: "x", values: (_u, splits) => splits.map(tick), size: 36, labelSize: 18, grid: grid(log) };
}

/**
 * A value axis; `log` thins the grid to decades; `linthresh` (a symmetric-log axis) leaves out
 * the labels crowding zero.
 */
export function yAxis(label, { scale = "y", side = 3, width = 64, log = false, linthresh = null } = {}) {
  const crowded = (v) => linthresh !== null && v !== 0 && Math.abs(v) < 5 * linthresh;
  return {
    label,
    scale,
    side,
    size: width,
    labelSize: 18,
    values: (_u, splits) => splits.map((v) => (crowded(v) ? "" : tick(v))),
    grid: grid(log || linthresh !== null),
  };
}

/** A visible data series. */
export function line(label, color, { dash, width = 1.5, points = false, scale = "y", gaps = true } = {}) {
  return {
    label,
    stroke: color,
    width,
    dash,
    scale,
    spanGaps: gaps,
    value: valueFmt,
    points: { show: points, size: 4, stroke: color, fill: color },
  };
}

/** An invisible series that only bounds a band (its legend row is hidden by `chart`). */
export function edge(label, scale = "y") {
  return { label, stroke: "transparent", width: 0, scale, spanGaps: true, points: { show: false }, value: valueFmt, _edge: true };
}

/** Vertical dashed lines at `lines()` = [{x, color, label}], drawn above the series. */
export function markers(lines) {
  return {
    hooks: {
      draw: [
        (u) => {
          const { ctx } = u;
          const { top, height } = u.bbox;
          ctx.save();
          ctx.setLineDash([4, 4]);
          ctx.lineWidth = 1.2 * devicePixelRatio;
          ctx.font = `${10 * devicePixelRatio}px system-ui, sans-serif`;
          for (const m of lines()) {
            const x = u.valToPos(m.x, "x", true);
            if (!Number.isFinite(x) || x < u.bbox.left - 1 || x > u.bbox.left + u.bbox.width + 1) continue;
            ctx.strokeStyle = m.color;
            ctx.globalAlpha = 0.75;
            ctx.beginPath();
            ctx.moveTo(x, top);
            ctx.lineTo(x, top + height);
            ctx.stroke();
            if (m.label) {
              ctx.globalAlpha = 1;
              ctx.fillStyle = m.color;
              ctx.fillText(m.label, x + 3 * devicePixelRatio, top + 11 * devicePixelRatio);
            }
          }
          ctx.restore();
        },
      ],
    },
  };
}

/**
 * Background shading of step ranges: `ranges()` = [{from, to, color}] in step units, drawn
 * before the series (e.g. the steps judged inside the stable set S).
 */
export function shading(ranges) {
  return {
    hooks: {
      drawClear: [
        (u) => {
          const { ctx } = u;
          const { left, top, width, height } = u.bbox;
          ctx.save();
          ctx.beginPath();
          ctx.rect(left, top, width, height);
          ctx.clip();
          for (const r of ranges()) {
            const x0 = u.valToPos(r.from, "x", true);
            const x1 = u.valToPos(r.to, "x", true);
            if (!Number.isFinite(x0) || !Number.isFinite(x1)) continue;
            ctx.fillStyle = r.color;
            ctx.fillRect(Math.min(x0, x1), top, Math.max(1, Math.abs(x1 - x0)), height);
          }
          ctx.restore();
        },
      ],
    },
  };
}

/**
 * A uPlot chart in `box` (a .plot element) that follows the box's width. `opts` is uPlot's,
 * without width; series marked `_edge` get no legend row.
 */
export function chart(box, opts, data, height = 280) {
  const holder = h("div");
  box.prepend(holder);
  const width = Math.max(320, box.clientWidth || 600);
  const u = new uPlot({ width, height, legend: { live: true }, cursor: { drag: { x: true, y: false } }, ...opts }, data, holder);
  hideEdges(u);
  let last = width;
  new ResizeObserver(() => {
    const w = Math.max(320, box.clientWidth);
    if (Math.abs(w - last) > 2) {
      last = w;
      u.setSize({ width: w, height });
    }
  }).observe(box);
  return u;
}

function hideEdges(u) {
  const rows = u.root.querySelectorAll(".u-legend .u-series");
  u.series.forEach((s, i) => {
    if (s._edge && rows[i]) rows[i].classList.add("hidden");
  });
}

/** The scale of a logarithmic (base 10) or linear axis. */
export function scale(log, extra = {}) {
  return log ? { time: false, distr: 3, log: 10, ...extra } : { time: false, ...extra };
}

/** A step axis spanning exactly the data (a log axis would otherwise round out to whole decades). */
export function stepScale(log) {
  return scale(log, { range: (_u, min, max) => (min === null || min === max ? [min ?? 0, (max ?? 0) + 1] : [min, max]) });
}

/** Tick labels: 0.01, 250, 1e-4, 2.5e+6 (no trailing zeros). */
export function tick(v) {
  if (v === null || v === undefined) return "";
  const abs = Math.abs(v);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return Number(v.toPrecision(3)).toExponential();
  return String(Number(v.toPrecision(3)));
}

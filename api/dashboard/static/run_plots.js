// The four plots of a run page, drawn from `state` (the run, its events, its two traces), and
// updated in place when a live run brings new data.
import { clear, effectiveLr, fmt } from "./common.js";
import { chart, edge, EVENT_COLORS, line, markers, PALETTE, positive, rgba, scale, shading, stepScale, xAxis, yAxis } from "./plots.js";

const REGIME_EVENTS = new Set(Object.keys(EVENT_COLORS));

export const state = {
  run: null,
  events: [],
  loss: null, // trace from step 1 (a log axis has no t = 0)
  dynamics: null, // trace from step 0
  stableRanges: [], // shaded on the drift plot
  logSteps: false, // step axis of the drift, sharpness and η·L plots
  driftScale: "symlog",
  charts: {},
  boxes: {},
};
// For people poking at the page from the console, and for the browser tests.
window.eosDashboard = state;

function regimeLines() {
  return state.events
    .filter((e) => REGIME_EVENTS.has(e.kind) && e.step !== null)
    .map((e) => ({ x: e.step, color: EVENT_COLORS[e.kind], label: e.kind === "exit" || e.kind === "return" ? "" : e.kind }));
}

/** Rows of a trace with the step axis' constraint applied (a log axis drops step 0). */
function rows(trace, log) {
  const keep = trace.step.map((s) => !log || s >= 1);
  const pick = (values) => values.filter((_v, i) => keep[i]);
  const columns = {};
  for (const [name, values] of Object.entries(trace.columns)) columns[name] = pick(values);
  return { step: pick(trace.step), columns };
}

function caption(key, parts) {
  clear(state.boxes[key].querySelector(".caption"), parts.filter(Boolean).join(" "));
}

/** Create the chart, or hand it new data when its options are unchanged. */
function upsert(key, signature, makeOpts, data) {
  const old = state.charts[key];
  if (old && old._signature === signature) {
    old.setData(data);
    return old;
  }
  if (old) old.destroy();
  const u = chart(state.boxes[key], makeOpts(), data);
  u._signature = signature;
  state.charts[key] = u;
  return u;
}

export function rebuild(keys) {
  for (const key of keys) {
    if (state.charts[key]) state.charts[key]._signature = null;
  }
  drawPlots();
}

function empty(key, text) {
  if (state.charts[key]) {
    state.charts[key].destroy();
    delete state.charts[key];
  }
  caption(key, [text]);
}

export function drawPlots() {
  if (!state.loss || !state.dynamics || state.loss.points === 0) {
    for (const key of Object.keys(state.boxes)) empty(key, "No trace yet: the plots appear when the run has recorded steps.");
    return;
  }
  drawLoss();
  drawDrift();
  drawSharpness();
  drawEtaLoss();
}

const SYNC = { key: "eos-run", scales: ["x", null] };
/** Without downsampling a point's min and max are the point itself; with it, a bucket's range. */
function downsampledNote(trace, name) {
  const lo = trace.columns[`${name}_min`];
  const hi = trace.columns[`${name}_max`];
  const bucketed = lo.some((v, i) => v !== hi[i]);
  return bucketed
    ? `Downsampled to ${trace.points} points: each is a bucket's mean, the band its min–max (spikes stay visible).`
    : `Every recorded step (${trace.points} points).`;
}

function drawLoss() {
  const trace = state.loss;
  const s = state.run.summary || {};
  const eta = effectiveLr(state.run);
  const C = s.rate_applies === false ? null : s.rate_C;
  const guide = typeof C === "number" && eta ? trace.step.map((t) => C / (eta * t)) : trace.step.map(() => null);
  const c = trace.columns;
  const data = [trace.step, positive(c.loss), positive(c.loss_max), positive(c.loss_min), positive(c.test_loss), guide];
  const fitFrom = s.rate_window_start;
  const last = typeof s.rate_window_end === "number" ? s.rate_window_end : trace.step[trace.step.length - 1];
  const makeOpts = () => ({
    scales: { x: stepScale(true), y: scale(true) },
    axes: [xAxis("step t", true), yAxis("loss", { log: true })],
    series: [
      { label: "step", value: (_u, v) => fmt(v) },
      line("loss", PALETTE[0]),
      edge("loss max"),
      edge("loss min"),
      line("test loss", PALETTE[3], { points: true, width: 1 }),
      line("Ĉ/(η t)", "#444444", { dash: [6, 4], width: 1.5 }),
    ],
    bands: [{ series: [2, 3], fill: rgba(PALETTE[0], 0.18) }],
    cursor: { sync: SYNC, drag: { x: true, y: false } },
    plugins: [
      markers(regimeLines),
      shading(() => (typeof fitFrom === "number" ? [{ from: Math.max(1, fitFrom), to: last, color: "rgba(0,0,0,0.06)" }] : [])),
    ],
  });
  upsert("loss", "loss", makeOpts, data);
  caption("loss", [
    downsampledNote(trace, "loss"),
    typeof C === "number"
      ? `Dashed: Ĉ/(η t) with Ĉ = ${fmt(C, 3)} = max η t L over the window (grey, steps ${fmt(fitFrom)}–${fmt(last)}): the loss lies on or below it there. The slope of the loss's running upper envelope is ${fmt(s.rate_slope, 3)} (the paper: −1).`
      : s.rate_applies === false
        ? `No rate: ${s.rate_note}.`
        : "The Ĉ/(η t) guide appears when the run has finished and its rate was measured.",
    "Vertical lines: entrance into S (green), exits (red), returns (blue).",
  ]);
}

/** A threshold for the symmetric-log drift axis: the 20th percentile of the non-zero |drift|. */
function linthresh(values) {
  const mags = values.filter((v) => typeof v === "number" && v !== 0).map(Math.abs).sort((a, b) => a - b);
  const q = mags.length ? mags[Math.floor(mags.length * 0.2)] : 1e-6;
  return 10 ** Math.floor(Math.log10(q)); // a whole decade, so the axis labels stay round
}

/** Steps inside S: each measured `stable` verdict (1 in S, 0.5 undecided, 0 outside; a bucket's mean) holds until the next one. */
function stableRanges(step, stable) {
  const out = [];
  let value = null;
  for (let i = 0; i < step.length; i++) {
    if (typeof stable[i] === "number") value = stable[i];
    const to = i + 1 < step.length ? step[i + 1] : step[i] + (i > 0 ? step[i] - step[i - 1] : 1);
    if (value !== null && value > 0) out.push({ from: step[i], to, color: rgba("#2e9e5b", 0.22 * value) });
  }
  return out;
}

function drawDrift() {
  const { step, columns: c } = rows(state.dynamics, state.logSteps);
  const hi = c.drift.map((d, i) => (typeof d === "number" && typeof c.drift_se[i] === "number" ? d + c.drift_se[i] : null));
  const lo = c.drift.map((d, i) => (typeof d === "number" && typeof c.drift_se[i] === "number" ? d - c.drift_se[i] : null));
  const zero = step.map(() => 0);
  const data = [step, c.drift, hi, lo, zero];
  const measured = c.drift.filter((v) => typeof v === "number").length;
  if (!measured) return empty("drift", "The drift was not measured in this run (instrument.drift_samples = 0).");
  const symlog = state.driftScale === "symlog";
  const threshold = linthresh(c.drift);
  state.stableRanges = stableRanges(step, c.stable);
  const makeOpts = () => ({
    scales: { x: stepScale(state.logSteps), y: symlog ? { distr: 4, asinh: threshold } : {} },
    axes: [xAxis("step", state.logSteps), yAxis("drift", { linthresh: symlog ? threshold : null })],
    series: [
      { label: "step", value: (_u, v) => fmt(v) },
      line("drift", PALETTE[1], { points: measured < 400 }),
      edge("drift + s.e."),
      edge("drift − s.e."),
      { ...edge("zero"), stroke: "#888888", width: 1 },
    ],
    bands: [{ series: [2, 3], fill: rgba(PALETTE[1], 0.2) }],
    cursor: { sync: SYNC, drag: { x: true, y: false } },
    plugins: [shading(() => state.stableRanges), markers(regimeLines)],
  });
  upsert("drift", `drift:${state.logSteps}:${state.driftScale}`, makeOpts, data);
  caption("drift", [
    `${measured} measured points; band: ± one standard error. Green: the verdict, held until the next measurement: full shade in the stable set S = {D ≤ 0} (confidently), half shade undecided, none outside S (a bucket shows its mean verdict).`,
    symlog ? `Symmetric log axis, linear within ±${fmt(threshold, 2)}.` : "",
  ]);
}

function drawSharpness() {
  const { step, columns: c } = rows(state.dynamics, state.logSteps);
  const eta = effectiveLr(state.run);
  const edgeValue = eta ? 2 / eta : null;
  const measured = c.sharpness.filter((v) => typeof v === "number").length + c.batch_sharpness.filter((v) => typeof v === "number").length;
  if (!measured) return empty("sharpness", "Sharpness was not measured in this run (instrument.sharpness_every = 0).");
  const all = [...c.sharpness, ...c.batch_sharpness, edgeValue].filter((v) => typeof v === "number");
  const log = all.every((v) => v > 0);
  const y = (values) => (log ? positive(values) : values);
  const data = [step, y(c.sharpness), y(c.batch_sharpness), step.map(() => edgeValue)];
  const makeOpts = () => ({
    scales: { x: stepScale(state.logSteps), y: scale(log) },
    axes: [xAxis("step", state.logSteps), yAxis("eigenvalue", { log })],
    series: [
      { label: "step", value: (_u, v) => fmt(v) },
      line("sharpness λ_max(H)", PALETTE[0], { points: true }),
      line("batch sharpness", PALETTE[4], { points: true }),
      line("2/η", "#c8333b", { dash: [6, 4], width: 1.5 }),
    ],
    cursor: { sync: SYNC, drag: { x: true, y: false } },
    plugins: [markers(regimeLines)],
  });
  upsert("sharpness", `sharpness:${state.logSteps}:${log}`, makeOpts, data);
  caption("sharpness", [`Dashed red: 2/η = ${fmt(edgeValue)} (η = ${fmt(eta)}), the classical edge of stability.`, log ? "Log axis." : ""]);
}

function drawEtaLoss() {
  const { step, columns: c } = rows(state.dynamics, state.logSteps);
  const s = state.run.summary || {};
  const kappa = s.kappa_B;
  const data = [step, positive(c.eta_loss), step.map(() => (typeof kappa === "number" && kappa > 0 ? kappa : null))];
  const makeOpts = () => ({
    scales: { x: stepScale(state.logSteps), y: scale(true) },
    axes: [xAxis("step", state.logSteps), yAxis("η·L", { log: true })],
    series: [{ label: "step", value: (_u, v) => fmt(v) }, line("η·L", PALETTE[2]), line("κ_B", "#444444", { dash: [6, 4] })],
    cursor: { sync: SYNC, drag: { x: true, y: false } },
    plugins: [markers(regimeLines)],
  });
  upsert("etaLoss", `etaLoss:${state.logSteps}`, makeOpts, data);
  caption("etaLoss", [
    "The paper's stable set is a loss sub-level set L ≤ κ_B/η.",
    typeof kappa === "number"
      ? s.kappa_B_bound === "upper"
        ? `Dashed: κ_B ≤ ${fmt(kappa, 3)}, the 5% quantile of η·L over this run's ${s.kappa_B_rows_outside} steps judged outside S (an upper bound on κ_B).`
        : `Dashed: κ_B ≥ ${fmt(kappa, 3)}: no step was judged outside S; the 95% quantile of η·L over the steps in S (a lower bound).`
      : "",
  ]);
}

// `/compare?runs=1,2&metric=loss`: runs overlaid on one metric (on the API's common step grid),
// with 2/η per run for the sharpness metrics, and their summaries side by side.
import { ACTIVE, api, boot, clear, fmt, h, keepFresh, paramsText, statusBadge } from "./common.js";
import { chart, line, PALETTE, positive, scale, stepScale, xAxis, yAxis } from "./plots.js";

const MAX_POINTS = 1500;
// eos_core.trace.METRICS
const METRICS = [
  "loss", "acc", "batch_loss", "grad_norm", "batch_grad_norm", "drift", "drift_se", "drift_samples_used", "rel_drift",
  "stable", "stable_p", "quad_drift", "sharpness", "sharpness_residual", "hvps", "batch_sharpness", "eta_loss",
  "margin", "param_norm", "test_loss", "test_acc",
];
const LOG_LOG = new Set(["loss", "batch_loss", "test_loss", "eta_loss", "grad_norm", "batch_grad_norm"]);
const SIGNED = new Set(["drift", "rel_drift", "quad_drift", "margin"]);
const EDGE = new Set(["sharpness", "batch_sharpness"]);
const SUMMARY_ROWS = [
  ["final_loss", "final loss"],
  ["best_loss", "best loss"],
  ["rate_slope", "slope of the loss's upper envelope vs log t (paper: −1)"],
  ["rate_C", "Ĉ = max η t L after entrance"],
  ["entrance_step", "entrance into S (step)"],
  ["exit_rate_per_1000", "exits per 1,000 steps in S (null: not resolved)"],
  ["fraction_in_S_after_entrance", "fraction of steps in S after entrance"],
  ["kappa_B", "κ_B of this run (see its bound)"],
  ["kappa_B_bound", "κ_B bound (upper / lower)"],
  ["loss_spikes", "loss spikes"],
  ["final_test_acc", "test accuracy"],
  ["lr_effective", "η applied"],
];

const state = { compare: null, chart: null };
window.eosDashboard = state;

/** The axes that suit a metric: log-log for losses, a symmetric log for signed ones like the drift. */
function axesFor(metric) {
  const y = LOG_LOG.has(metric) || EDGE.has(metric) ? "log" : SIGNED.has(metric) ? "symlog" : "linear";
  return { logx: LOG_LOG.has(metric), y };
}

function options() {
  const q = new URLSearchParams(location.search);
  const metric = METRICS.includes(q.get("metric")) ? q.get("metric") : "loss";
  const ids = (q.get("runs") || "").split(",").map((s) => s.trim()).filter((s) => /^\d+$/.test(s));
  const defaults = axesFor(metric);
  const logx = q.has("logx") ? q.get("logx") === "1" : defaults.logx;
  const y = ["linear", "log", "symlog"].includes(q.get("y")) ? q.get("y") : defaults.y;
  return { metric, ids, logx, y };
}

function form(opts) {
  const runs = h("input", { name: "runs", value: opts.ids.join(","), placeholder: "run ids, e.g. 3,4,7", size: 24, id: "runs-input" });
  const metric = h("select", { name: "metric", id: "metric" }, METRICS.map((m) => h("option", { value: m, text: m, selected: m === opts.metric })));
  const logx = h("input", { type: "checkbox", name: "logx", value: "1", checked: opts.logx });
  const y = h("select", { name: "y", id: "y-scale" }, ["linear", "log", "symlog"].map((v) => h("option", { value: v, text: `y: ${v}`, selected: v === opts.y })));
  metric.addEventListener("change", () => {
    const axes = axesFor(metric.value);
    logx.checked = axes.logx;
    y.value = axes.y;
  });
  return h(
    "form",
    {
      class: "row card",
      on: {
        submit: (event) => {
          event.preventDefault();
          const q = new URLSearchParams();
          q.set("runs", runs.value.replace(/\s+/g, ""));
          q.set("metric", metric.value);
          q.set("logx", logx.checked ? "1" : "0");
          q.set("y", y.value);
          location.search = q.toString();
        },
      },
    },
    h("label", {}, "runs", runs),
    metric,
    h("label", {}, logx, "log step axis"),
    y,
    h("button", { type: "submit", text: "Show" }),
    h("span", { class: "muted small", text: "Pick runs on an experiment page, or type their ids." }),
  );
}

async function render(main, banner) {
  const opts = options();
  const head = h("div", { class: "row" }, h("h1", { text: "Compare runs" }));
  const plotBox = h("div", { class: "plot", id: "plot-compare" }, h("div", { class: "caption" }));
  const table = h("div", { class: "card", id: "summary-box" });
  main.append(head, form(opts));
  if (!opts.ids.length) {
    main.append(h("div", { class: "notice warn", text: "No runs chosen yet." }));
    return;
  }
  main.append(h("div", { class: "card" }, h("h2", { text: opts.metric }), plotBox), table);
  const refresh = async () => {
    const result = await api("/compare", { runs: opts.ids.join(","), metrics: opts.metric, max_points: MAX_POINTS });
    state.compare = result;
    drawChart(plotBox, result, opts);
    drawTable(table, result);
    return result.runs.some((r) => ACTIVE.has(r.status));
  };
  await keepFresh(refresh, banner);
}

/** η of a compared run: the applied one from its summary, else the swept optimizer.lr. */
function etaOf(run) {
  if (run.summary && typeof run.summary.lr_effective === "number") return run.summary.lr_effective;
  const lr = run.params && run.params["optimizer.lr"];
  return typeof lr === "number" ? lr : null;
}

const label = (run) => `#${run.id} ${paramsText(run.params) || run.name}`;

function drawChart(box, result, opts) {
  const keep = result.step.map((s) => !opts.logx || s >= 1);
  const pick = (values) => values.filter((_v, i) => keep[i]);
  const step = pick(result.step);
  const transform = (values) => (opts.y === "log" ? positive(values) : values);
  const data = [step];
  const series = [{ label: "step", value: (_u, v) => fmt(v) }];
  result.series.forEach((s, i) => {
    const run = result.runs.find((r) => r.id === s.run_id);
    data.push(transform(pick(s.columns[opts.metric])));
    series.push(line(label(run), PALETTE[i % PALETTE.length]));
  });
  if (EDGE.has(opts.metric)) {
    result.runs.forEach((run, i) => {
      const eta = etaOf(run);
      if (!eta) return;
      data.push(step.map(() => 2 / eta));
      series.push(line(`2/η #${run.id}`, PALETTE[i % PALETTE.length], { dash: [6, 4], width: 1 }));
    });
  }
  const values = data.slice(1, 1 + result.series.length).flat().filter((v) => typeof v === "number" && v !== 0).map(Math.abs).sort((a, b) => a - b);
  const threshold = values.length ? 10 ** Math.floor(Math.log10(values[Math.floor(values.length * 0.2)])) : 1;
  const y = opts.y === "log" ? scale(true) : opts.y === "symlog" ? { distr: 4, asinh: threshold } : {};
  const signature = `${result.runs.map((r) => r.id).join(",")}:${series.length}`;
  if (state.chart && state.chart._signature === signature) {
    state.chart.setData(data);
  } else {
    if (state.chart) state.chart.destroy();
    state.chart = chart(box, { scales: { x: stepScale(opts.logx), y: { time: false, ...y } }, axes: [xAxis("step", opts.logx), yAxis(opts.metric, { log: opts.y === "log", linthresh: opts.y === "symlog" ? threshold : null })], series }, data, 360);
    state.chart._signature = signature;
  }
  const notes = [`${result.runs.length} runs on a common grid of ${result.step.length} steps (each point: the mean of a run's steps in the bucket).`];
  if (opts.logx && step.length < result.step.length) notes.push("Step 0 is left out on the log axis.");
  if (EDGE.has(opts.metric)) notes.push("Dashed: each run's 2/η.");
  clear(box.querySelector(".caption"), notes.join(" "));
}

function drawTable(box, result) {
  const head = h(
    "tr",
    {},
    h("th", { text: "" }),
    result.runs.map((r, i) =>
      h(
        "th",
        { class: "num" },
        h("span", { style: `display:inline-block;width:10px;height:10px;margin-right:4px;background:${PALETTE[i % PALETTE.length]}` }),
        h("a", { href: `/runs/${r.id}`, text: `#${r.id}` }),
      ),
    ),
  );
  const rows = [
    h("tr", {}, h("td", { text: "name" }), result.runs.map((r) => h("td", { class: "num", text: r.name }))),
    h("tr", {}, h("td", { text: "cell" }), result.runs.map((r) => h("td", { class: "num", text: paramsText(r.params) }))),
    h("tr", {}, h("td", { text: "status" }), result.runs.map((r) => h("td", { class: "num" }, statusBadge(r.status)))),
    ...SUMMARY_ROWS.map(([key, title]) =>
      h("tr", {}, h("td", { text: title }), result.runs.map((r) => h("td", { class: "num", text: fmt(r.summary ? r.summary[key] : null) }))),
    ),
  ];
  clear(box, h("h2", { text: "Summaries" }), h("table", { class: "data", id: "compare-table" }, h("thead", {}, head), h("tbody", {}, rows)));
}

boot(render);

// `/experiments/{id}`: the sweep as a grid of run statuses, a heatmap of one summary field over
// two swept parameters (step size × batch size by default), and the runs with a compare action.
import { ACTIVE, api, boot, clear, errorType, failureText, fmt, fmtTime, h, interval, keepFresh, paramsText, progressBar, shortName, STATUSES, statusBadge, tags } from "./common.js";

// Summary fields offered first in the heatmap, in this order; any other numeric field follows.
const PREFERRED = [
  "final_loss",
  "best_loss",
  "rate_slope",
  "rate_C",
  "entrance_step",
  "exit_rate_per_1000",
  "fraction_in_S_after_entrance",
  "kappa_B",
  "final_test_acc",
  "final_test_loss",
  "loss_spikes",
  "max_loss",
  "sharpness_edge.fraction_above",
  "batch_sharpness_edge.fraction_above",
];
// Viridis, sampled: perceptually even and readable by colour-blind people.
const VIRIDIS = ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"];

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

/** Numeric summary fields, one level of nesting flattened (sharpness_edge.fraction_above). */
export function numericFields(summary) {
  const out = {};
  for (const [key, value] of Object.entries(summary || {})) {
    if (typeof value === "number" && Number.isFinite(value)) out[key] = value;
    else if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const [sub, v] of Object.entries(value)) if (typeof v === "number" && Number.isFinite(v)) out[`${key}.${sub}`] = v;
    }
  }
  return out;
}

function viridis(t) {
  const x = Math.max(0, Math.min(1, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const a = parseInt(VIRIDIS[i].slice(1), 16);
  const b = parseInt(VIRIDIS[i + 1].slice(1), 16);
  const mix = (shift) => Math.round(((a >> shift) & 255) * (1 - f) + ((b >> shift) & 255) * f);
  return `rgb(${mix(16)},${mix(8)},${mix(0)})`;
}

function defaultAxes(keys) {
  const col = keys.find((k) => k.endsWith(".lr")) || keys[0] || null;
  const row = keys.find((k) => k !== col && k.endsWith("batch_size")) || keys.find((k) => k !== col) || null;
  return { col, row };
}

async function render(main, banner) {
  const id = Number(location.pathname.split("/").filter(Boolean).pop());
  const state = { axes: null, slice: {}, field: null, log: {}, selected: new Set() };
  const header = h("div", { class: "card", id: "header" });
  const axesBar = h("div", { class: "row", id: "axes" });
  const statusBox = h("div", { class: "card" }, h("h2", { text: "Runs by cell: status" }), h("div", { id: "status-grid-box" }));
  const heatBox = h("div", { class: "card" }, h("div", { class: "row", id: "heat-controls" }), h("div", { id: "heatmap-box" }));
  const runsBox = h("div", { class: "card", id: "runs-box" });
  const kappaBox = h("div", { class: "card", id: "kappa-box" });
  main.append(header, h("div", { class: "card" }, axesBar), h("div", { class: "grids" }, statusBox, heatBox), runsBox, kappaBox);
  let kappaFor = null; // the finished-run count the κ_B table was read for
  let experiment = null;

  const redraw = () => {
    drawHeader(header, experiment);
    drawAxes(axesBar, experiment, state, redraw);
    drawStatusGrid(statusBox.querySelector("#status-grid-box"), experiment, state);
    drawHeatmap(heatBox, experiment, state, redraw);
    drawRuns(runsBox, experiment, state);
  };
  const refreshKappa = async () => {
    const analysed = experiment.runs.filter((r) => r.summary).length;
    if (analysed === kappaFor) return;
    kappaFor = analysed;
    drawKappa(kappaBox, await api(`/experiments/${id}/kappa`));
  };
  const refresh = async () => {
    experiment = await api(`/experiments/${id}`);
    await refreshKappa();
    document.title = `${experiment.name} · eos`;
    redraw();
    return experiment.runs.some((r) => ACTIVE.has(r.status));
  };
  await keepFresh(refresh, banner);
}

function drawHeader(box, e) {
  const spec = e.spec || {};
  const opt = spec.optimizer || {};
  const counts = {};
  for (const r of e.runs) counts[r.status] = (counts[r.status] || 0) + 1;
  const progress = e.runs.length ? e.runs.reduce((s, r) => s + (r.progress || 0), 0) / e.runs.length : 0;
  const facts = [
    spec.model && spec.model.kind,
    spec.dataset && spec.dataset.kind,
    opt.steps && `${opt.steps} steps`,
    opt.sampler,
  ].filter(Boolean);
  clear(
    box,
    h("div", { class: "row" }, h("h1", { text: e.name }), tags(e.tags), h("span", { class: "spacer" }), h("span", { class: "muted", text: `#${e.id} · ${e.owner} · ${fmtTime(e.created_at)}` })),
    h("div", { class: "muted", text: facts.join(" · ") }),
    h(
      "div",
      { class: "row", id: "status-counts", style: "margin-top:8px" },
      h("strong", { text: `${e.runs.length} runs` }),
      STATUSES.filter((s) => counts[s]).map((s) => h("span", {}, statusBadge(s), ` ${counts[s]}`)),
      progressBar(progress),
      h("span", { class: "muted small", text: `${(progress * 100).toFixed(0)}% done` }),
      e.runs.some((r) => ACTIVE.has(r.status)) ? h("span", { class: "muted small", text: "· updating live" }) : null,
    ),
    h("details", {}, h("summary", { text: "spec and sweep as submitted" }), h("pre", { text: JSON.stringify({ spec: e.spec, sweep: e.sweep }, null, 2) })),
  );
}

function drawAxes(bar, e, state, redraw) {
  const keys = Object.keys(e.sweep || {});
  if (!state.axes) state.axes = defaultAxes(keys);
  for (const k of keys) if (!(k in state.slice)) state.slice[k] = e.sweep[k][0];
  if (keys.length === 0) {
    clear(bar, h("span", { class: "muted", text: "A single run (no sweep)." }));
    return;
  }
  const pick = (which) =>
    h(
      "select",
      {
        id: `axis-${which}`,
        on: {
          change: (ev) => {
            const other = which === "col" ? "row" : "col";
            state.axes[which] = ev.target.value || null;
            if (state.axes[other] === state.axes[which]) state.axes[other] = null;
            redraw();
          },
        },
      },
      which === "row" ? h("option", { value: "", text: "(none)" }) : null,
      keys.map((k) => h("option", { value: k, text: k, selected: state.axes[which] === k })),
    );
  const fixed = keys.filter((k) => k !== state.axes.col && k !== state.axes.row);
  const slices = fixed.map((k) =>
    h(
      "label",
      {},
      `${k} =`,
      h(
        "select",
        {
          on: {
            change: (ev) => {
              state.slice[k] = e.sweep[k][Number(ev.target.value)];
              redraw();
            },
          },
        },
        e.sweep[k].map((v, i) => h("option", { value: i, text: fmt(v), selected: same(v, state.slice[k]) })),
      ),
    ),
  );
  clear(
    bar,
    h("strong", { text: "Sweep" }),
    h("label", {}, "columns", pick("col")),
    keys.length > 1 ? h("label", {}, "rows", pick("row")) : null,
    slices,
  );
}

/** The grid's rows × columns of runs: {colValues, rowValues, cell(ri, ci) -> run|null}. */
function layout(e, state) {
  const { col, row } = state.axes || {};
  const colValues = col ? e.sweep[col] : [null];
  const rowValues = row ? e.sweep[row] : [null];
  const fixed = Object.keys(e.sweep || {}).filter((k) => k !== col && k !== row);
  // Runs by their cell's coordinates (a sweep of a thousand runs is a thousand lookups, not a million).
  const key = (c, r, rest) => JSON.stringify([col ? c : null, row ? r : null, rest]);
  const index = new Map();
  for (const run of e.runs) {
    const k = key(run.params[col], run.params[row], fixed.map((f) => run.params[f]));
    if (!index.has(k)) index.set(k, run);
  }
  const slice = fixed.map((f) => state.slice[f]);
  const cell = (ri, ci) => index.get(key(colValues[ci], rowValues[ri], slice)) || null;
  return { col, row, colValues, rowValues, cell };
}

function gridTable(e, state, id, fillCell) {
  const { col, row, colValues, rowValues, cell } = layout(e, state);
  const head = h(
    "tr",
    {},
    h("th", { class: "axis", text: row && col ? `${shortName(row)} \\ ${shortName(col)}` : col ? shortName(col) : "" }),
    colValues.map((v) => h("th", { text: col ? `${shortName(col)} = ${fmt(v)}` : "" })),
  );
  const body = rowValues.map((rv, ri) =>
    h(
      "tr",
      {},
      h("th", { text: row ? `${shortName(row)} = ${fmt(rv)}` : "" }),
      colValues.map((_cv, ci) => {
        const run = cell(ri, ci);
        return run ? fillCell(run) : h("td", { class: "empty", text: "no run" });
      }),
    ),
  );
  return h("table", { class: "grid", id }, h("thead", {}, head), h("tbody", {}, body));
}

function drawStatusGrid(box, e, state) {
  const fill = (run) => {
    const active = ACTIVE.has(run.status);
    const detail = active
      ? h("div", {}, progressBar(run.progress), h("span", { class: "small muted", text: ` ${run.step}/${run.steps}` }))
      : run.error
        ? h("div", { class: "small failure", text: `at step ${run.step}: ${errorType(run.error)}` })
        : h("div", { class: "small muted", text: run.summary ? `loss ${fmt(run.summary.final_loss, 3)}` : "" });
    const why = failureText(run);
    return h(
      "td",
      { class: `cell s-${run.status}`, data: { run: run.id, status: run.status }, title: why ? `${run.name}: ${why}` : run.name },
      h("div", {}, h("a", { href: `/runs/${run.id}`, text: `#${run.id}` }), " ", statusBadge(run.status)),
      detail,
    );
  };
  clear(box, gridTable(e, state, "status-grid", fill));
}

function drawHeatmap(box, e, state, redraw) {
  const values = new Map(e.runs.map((r) => [r.id, numericFields(r.summary)]));
  const known = new Set();
  for (const fields of values.values()) for (const k of Object.keys(fields)) known.add(k);
  const fields = [...PREFERRED.filter((k) => known.has(k)), ...[...known].filter((k) => !PREFERRED.includes(k)).sort()];
  const controls = box.querySelector("#heat-controls");
  const target = box.querySelector("#heatmap-box");
  if (!fields.length) {
    clear(controls, h("h2", { text: "Heatmap" }));
    clear(target, h("p", { class: "muted", text: "No run has a summary yet: the heatmap appears as runs finish." }));
    return;
  }
  if (!state.field || !known.has(state.field)) state.field = fields[0];
  const field = state.field;
  const shown = e.runs.map((r) => values.get(r.id)[field]).filter((v) => typeof v === "number");
  const lo = Math.min(...shown);
  const hi = Math.max(...shown);
  const canLog = lo > 0;
  const log = canLog && (field in state.log ? state.log[field] : hi / lo >= 100);
  const t = (v) => {
    if (hi === lo) return 0.5;
    return log ? (Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo)) : (v - lo) / (hi - lo);
  };
  const select = h(
    "select",
    { id: "heat-field", on: { change: (ev) => ((state.field = ev.target.value), redraw()) } },
    fields.map((k) => h("option", { value: k, text: k, selected: k === field })),
  );
  const logBox = h("input", {
    type: "checkbox",
    id: "heat-log",
    checked: log,
    disabled: !canLog,
    on: { change: (ev) => ((state.log[field] = ev.target.checked), redraw()) },
  });
  const bar = h("span", { class: "legend-bar", style: `background:linear-gradient(to right, ${VIRIDIS.join(",")})` });
  clear(
    controls,
    h("h2", { text: "Heatmap", style: "margin:0" }),
    select,
    h("label", { title: canLog ? "" : "needs positive values" }, logBox, "log colour"),
    h("span", { class: "spacer" }),
    h("span", { class: "small", id: "heat-legend" }, fmt(lo, 3), " ", bar, " ", fmt(hi, 3)),
  );
  const fill = (run) => {
    const v = values.get(run.id)[field];
    if (typeof v !== "number") {
      return h("td", { class: "empty", data: { run: run.id }, text: ACTIVE.has(run.status) ? run.status : "—" });
    }
    const tt = t(v);
    return h(
      "td",
      {
        class: "heat",
        data: { run: run.id, value: v },
        title: `${run.name}: ${field} = ${v}`,
        style: `background:${viridis(tt)};color:${tt > 0.62 ? "#1d2330" : "#ffffff"}`,
      },
      h("a", { href: `/runs/${run.id}`, text: fmt(v, 3) }),
    );
  };
  clear(target, gridTable(e, state, "heatmap", fill));
}

function drawRuns(box, e, state) {
  const ids = e.runs.map((r) => r.id);
  for (const id of [...state.selected]) if (!ids.includes(id)) state.selected.delete(id);
  const compare = h("a", { id: "compare-link" });
  const updateCompare = () => {
    const chosen = state.selected.size ? [...state.selected] : ids;
    compare.href = `/compare?runs=${chosen.join(",")}`;
    compare.textContent = state.selected.size ? `Compare ${state.selected.size} selected →` : `Compare all ${ids.length} →`;
  };
  const columns = ["", "Run", "Cell", "Status", "Progress", "Final loss", "Rate slope", "Entrance", "Exits / 1,000 steps in S", "In S after entrance", "κ_B (η·L)"];
  const rows = e.runs.flatMap((r) => {
    const s = r.summary || {};
    const box_ = h("input", {
      type: "checkbox",
      checked: state.selected.has(r.id),
      on: {
        change: (ev) => {
          if (ev.target.checked) state.selected.add(r.id);
          else state.selected.delete(r.id);
          updateCompare();
        },
      },
    });
    const why = failureText(r);
    const row = h(
      "tr",
      { data: { run: r.id }, class: why ? "has-failure" : null },
      h("td", {}, box_),
      h("td", {}, h("a", { href: `/runs/${r.id}`, text: `#${r.id}` })),
      h("td", { text: paramsText(r.params) || r.name }),
      h("td", {}, statusBadge(r.status)),
      h("td", {}, progressBar(r.progress), h("span", { class: "small muted", text: ` ${r.step}/${r.steps}` })),
      h("td", { class: "num", text: fmt(s.final_loss) }),
      h("td", { class: "num", text: s.rate_applies === false ? "n/a" : fmt(s.rate_slope, 3) }),
      h("td", { class: "num", text: fmt(s.entrance_step) }),
      h("td", { class: "num", text: s.exits_resolved === false ? "not resolved" : fmt(s.exit_rate_per_1000, 3) }),
      h("td", { class: "num", text: fmt(s.fraction_in_S_after_entrance, 3) }),
      h("td", { class: "num", text: s.kappa_B == null ? "—" : `${s.kappa_B_bound === "upper" ? "≤ " : "≥ "}${fmt(s.kappa_B, 3)}` }),
    );
    // A failed or diverged run says why on a row of its own beneath: the step reached, the error's type and message.
    const failure = why
      ? h("tr", { class: "failure", data: { failureOf: r.id } }, h("td", {}), h("td", { colspan: columns.length - 1 }, h("span", { class: "failure-text", text: why })))
      : null;
    return failure ? [row, failure] : [row];
  });
  updateCompare();
  clear(
    box,
    h("div", { class: "row" }, h("h2", { text: "Runs" }), h("span", { class: "spacer" }), compare),
    h("table", { class: "data", id: "runs" }, h("thead", {}, h("tr", {}, columns.map((c) => h("th", { text: c })))), h("tbody", {}, rows)),
  );
}

boot(render);

/** κ_B per batch size, pooled over the experiment's analysed runs (GET /experiments/{id}/kappa). */
function drawKappa(box, body) {
  const columns = ["Batch size B", "Runs", "κ_B", "Bound", "95% interval", "Steps outside S", "Steps in S"];
  const rows = body.items.map((k) =>
    h(
      "tr",
      { data: { batch: k.batch_size } },
      h("td", { class: "num", text: fmt(k.batch_size) }),
      h("td", { class: "num", text: fmt(k.runs) }),
      h("td", { class: "num", text: fmt(k.kappa_B, 3) }),
      h("td", { text: k.kappa_B_bound || "—" }),
      h("td", { class: "num", text: interval(k.kappa_B_interval, 3) }),
      h("td", { class: "num", text: fmt(k.kappa_B_rows_outside) }),
      h("td", { class: "num", text: fmt(k.kappa_B_rows_in_S) }),
    ),
  );
  clear(
    box,
    h("h2", { text: "κ_B per batch size" }),
    body.items.length
      ? h("table", { class: "data", id: "kappa" }, h("thead", {}, h("tr", {}, columns.map((c) => h("th", { text: c })))), h("tbody", {}, rows))
      : h("p", { class: "muted", text: "No analysed run yet." }),
    h("p", {
      class: "small muted",
      text:
        "The paper's stable set contains the sub-level set η·L ≤ κ_B. Pooled over the finished runs with the same B, from their measured steps with a decided verdict. " +
        "Bound upper: κ_B is the 5% quantile of η·L over the steps judged outside S (at most 5% of them had a smaller η·L). " +
        "Bound lower: no step was judged outside S; κ_B is the 95% quantile of η·L over the steps in S. " +
        "Interval: distribution-free 95% interval of that quantile from order statistics (∞: open).",
    }),
  );
}

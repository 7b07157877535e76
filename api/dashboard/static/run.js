// `/runs/{id}`: one run. Loss on log-log axes with the C/(η t) guide of the rate fit; the drift with
// its standard-error band and the steps judged inside the stable set S shaded; sharpness and batch
// sharpness against 2/η; η·L against the stability constant; the events. Traces come downsampled
// (each point a bucket's mean, with its min and max) so a long run draws fast and keeps its spikes.
import { ACTIVE, api, ApiError, boot, clear, effectiveLr, failureText, fmt, fmtDuration, fmtTime, h, interval, keepFresh, paramsText, progressBar, statusBadge, token } from "./common.js";
import { EVENT_COLORS } from "./plots.js";
import { drawPlots, rebuild, state } from "./run_plots.js";

const MAX_POINTS = 1500;
const LOSS_METRICS = "loss,test_loss";
const DYNAMICS_METRICS = "drift,drift_se,stable,sharpness,batch_sharpness,eta_loss";

async function render(main, banner) {
  const id = Number(location.pathname.split("/").filter(Boolean).pop());
  const header = h("div", { class: "card", id: "header" });
  const stats = h("div", { class: "card" }, h("div", { class: "stats", id: "stats" }));
  const controls = plotControls();
  const plots = h("div", { class: "plots" });
  for (const [key, title] of [
    ["loss", "Loss (log-log)"],
    ["drift", "Drift D(θ) = E_B[L(θ − η g_B)] − L(θ)"],
    ["sharpness", "Sharpness and batch sharpness vs 2/η"],
    ["etaLoss", "η·L vs the stability constant κ"],
  ]) {
    const box = h("div", { class: "plot", id: `plot-${key}` }, h("div", { class: "caption" }));
    state.boxes[key] = box;
    plots.append(h("div", { class: "card" }, h("h2", { text: title }), box));
  }
  const eventsBox = h("div", { class: "card", id: "events-box" });
  const details = h("div", { class: "card", id: "details" });
  main.append(header, stats, h("div", { class: "card row" }, controls), plots, eventsBox, details);

  const refresh = async () => {
    const run = await api(`/runs/${id}`);
    const started = run.status !== "queued" || run.step > 0;
    const [events, loss, dynamics] = await Promise.all([
      api(`/runs/${id}/events`),
      started ? api(`/runs/${id}/trace`, { metrics: LOSS_METRICS, start: 1, max_points: MAX_POINTS }) : null,
      started ? api(`/runs/${id}/trace`, { metrics: DYNAMICS_METRICS, max_points: MAX_POINTS }) : null,
    ]);
    Object.assign(state, { run, events: events.items, loss, dynamics });
    document.title = `${run.name || `run ${run.id}`} · eos`;
    drawHeader(header, run);
    drawStats(stats.firstChild, run);
    drawPlots();
    drawEvents(eventsBox, state.events);
    drawDetails(details, run);
    return ACTIVE.has(run.status);
  };
  await keepFresh(refresh, banner);
}

function plotControls() {
  const logSteps = h("input", {
    type: "checkbox",
    id: "log-steps",
    on: { change: (ev) => ((state.logSteps = ev.target.checked), rebuild(["drift", "sharpness", "etaLoss"])) },
  });
  const drift = h(
    "select",
    { id: "drift-scale", on: { change: (ev) => ((state.driftScale = ev.target.value), rebuild(["drift"])) } },
    h("option", { value: "symlog", text: "drift axis: symmetric log" }),
    h("option", { value: "linear", text: "drift axis: linear" }),
  );
  const download = h("button", { text: "Download trace (CSV)", on: { click: downloadCsv } });
  return [
    h("label", {}, logSteps, "log step axis (drift, sharpness, η·L)"),
    drift,
    h("span", { class: "muted small", text: "Drag across a plot to zoom, double-click to reset; the cursor is shared." }),
    h("span", { class: "spacer" }),
    download,
  ];
}

async function downloadCsv() {
  const run = state.run;
  if (!run) return;
  const response = await fetch(`/api/v1/runs/${run.id}/trace?format=csv`, { headers: { Authorization: `Bearer ${token()}` } });
  if (!response.ok) throw new ApiError(response.status, response.statusText);
  const url = URL.createObjectURL(await response.blob());
  const a = h("a", { href: url, download: `run-${run.id}.csv` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

function drawHeader(box, run) {
  const active = ACTIVE.has(run.status);
  const t = run.timings || {};
  clear(
    box,
    h(
      "div",
      { class: "row" },
      h("h1", { text: run.name || `run ${run.id}` }),
      statusBadge(run.status),
      run.cancel_requested && active ? h("span", { class: "muted", text: "cancel requested" }) : null,
      h("span", { class: "spacer" }),
      h("a", { href: `/experiments/${run.experiment_id}`, text: `← experiment #${run.experiment_id}` }),
      h("a", { href: `/compare?runs=${run.id}`, text: "compare…" }),
    ),
    h(
      "div",
      { class: "row muted" },
      h("span", { text: `#${run.id}` }),
      run.params && Object.keys(run.params).length ? h("strong", { text: paramsText(run.params) }) : null,
      h("span", {}, progressBar(run.progress), ` step ${run.step} of ${run.steps}`),
      h("span", { text: `started ${fmtTime(t.started_at)}` }),
      h("span", { text: t.finished_at ? `took ${fmtDuration(t.started_at, t.finished_at)}` : active ? "updating live" : "" }),
      h("span", { text: `attempts ${run.attempts}${run.worker ? ` · ${run.worker}` : ""}` }),
      h("span", { text: `queue ${run.queue}`, id: "queue" }),
    ),
    failureNotice(run),
    queueNotice(run),
  );
}

/** A queued run whose queue no live worker serves waits: say so, and what would serve it. */
function queueNotice(run) {
  if (run.status !== "queued" || run.queue_served !== false) return null;
  return h(
    "div",
    { class: "notice warn", id: "unserved", role: "status" },
    `No live worker serves the ${run.queue} queue: this run waits until one starts (eos worker --queue ${run.queue}).`,
  );
}

/** A failed or diverged run says why at the top: the step it reached, the error's type and message. */
function failureNotice(run) {
  const why = failureText(run);
  if (!why) return null;
  const where = why.split(": ")[0];
  return h(
    "div",
    { class: "notice error failure", id: "failure", role: "status" },
    h("strong", { text: where.charAt(0).toUpperCase() + where.slice(1) }),
    run.error ? h("pre", { text: run.error }) : null,
  );
}

function stat(key, value, title, id) {
  return h("div", { class: "stat", title, id }, h("div", { class: "k", text: key }), h("div", { class: "v", text: value }));
}

/** "[low, high]" of an interval; an open end shows as ∞. */
function drawStats(box, run) {
  const s = run.summary || {};
  const eta = effectiveLr(run);
  const edge_ = (e) => (e && typeof e.fraction_above === "number" ? `${fmt(e.fraction_above * 100, 3)}% of steps` : "—");
  clear(
    box,
    stat("η applied", fmt(eta), "the step size actually applied (η·m for the mean-field two-layer net)"),
    stat("2/η", fmt(eta ? 2 / eta : null), "the classical edge of stability", "two-over-eta"),
    stat("final loss", fmt(s.final_loss)),
    stat("best loss", s.best_loss == null ? "—" : `${fmt(s.best_loss)} @ ${fmt(s.best_step)}`),
    stat(
      "rate slope",
      s.rate_applies === false ? "n/a" : fmt(s.rate_slope, 3),
      s.rate_applies === false
        ? s.rate_note
        : `least-squares slope of log max_{s≥t} L_s against log t on every recorded step from ${fmt(s.rate_window_start)} to ${fmt(s.rate_window_end)}; 95% block bootstrap ${interval(s.rate_slope_interval, 3)}; the paper predicts −1`,
    ),
    stat("Ĉ = max η t L", s.rate_applies === false ? "n/a" : fmt(s.rate_C, 3), `the tightest C in L_t ≤ C/(η t) over the window (reached at step ${fmt(s.rate_C_step)})${s.frozen_from_step != null ? `; the iterate stops moving at step ${s.frozen_from_step}` : ""}`),
    stat("entrance into S", fmt(s.entrance_step), `first step in S from which every window of ${fmt(s.window_steps)} steps is at least half in S (undecided counts as not in S); drift measured every ${fmt(s.drift_cadence_steps)} steps`),
    stat(
      "exits per 1,000 steps in S",
      s.exits_resolved === false ? "not resolved" : fmt(s.exit_rate_per_1000, 3),
      s.exits_resolved === false ? s.exits_note : `after entrance; ${fmt(s.exits_observed)} exits in ${fmt(s.steps_in_S_after_entrance)} steps in S; 95% interval ${interval(s.exit_rate_interval, 3)}`,
    ),
    stat("in S after entrance", s.fraction_in_S_after_entrance == null ? "—" : `${fmt(s.fraction_in_S_after_entrance * 100, 3)}%`, `fraction of steps from entrance on whose verdict is in S; 95% interval ${interval(s.fraction_in_S_after_entrance_interval, 3)}`),
    stat(
      "κ_B",
      s.kappa_B == null ? "—" : `${s.kappa_B_bound === "upper" ? "≤ " : "≥ "}${fmt(s.kappa_B, 3)}`,
      s.kappa_B_bound === "upper"
        ? `an upper bound: the 5% quantile of η·L over the ${fmt(s.kappa_B_rows_outside)} steps judged outside S; 95% interval ${interval(s.kappa_B_interval, 3)}`
        : s.kappa_B_bound === "lower"
          ? `a lower bound: no step was judged outside S; the 95% quantile of η·L over the steps in S`
          : "",
    ),
    stat("sharpness > 2/η", edge_(s.sharpness_edge)),
    stat("batch sharpness > 2/η", edge_(s.batch_sharpness_edge)),
    stat("loss spikes", fmt(s.loss_spikes), "recorded steps where the loss more than doubled"),
    stat("test accuracy", fmt(s.final_test_acc, 3)),
  );
}

function drawEvents(box, events) {
  const rows_ = events.map((e) =>
    h(
      "tr",
      { data: { kind: e.kind } },
      h("td", {}, h("span", { class: "tag", text: e.kind, style: EVENT_COLORS[e.kind] ? `color:${EVENT_COLORS[e.kind]};font-weight:600` : "" })),
      h("td", { class: "num", text: fmt(e.step) }),
      h("td", { class: "muted small", text: Object.keys(e.details || {}).length ? JSON.stringify(e.details) : "" }),
      h("td", { class: "muted small", text: fmtTime(e.created_at) }),
    ),
  );
  clear(
    box,
    h("h2", { text: `Events (${events.length})` }),
    events.length
      ? h("table", { class: "data", id: "events" }, h("thead", {}, h("tr", {}, ["Kind", "Step", "Details", "Recorded"].map((t) => h("th", { text: t })))), h("tbody", {}, rows_))
      : h("p", { class: "muted", text: "No events yet." }),
  );
}

function drawDetails(box, run) {
  const open = new Set([...box.querySelectorAll("details[open]")].map((d) => d.dataset.key));
  const block = (key, title, value) =>
    value ? h("details", { data: { key }, open: open.has(key) }, h("summary", { text: title }), h("pre", { text: JSON.stringify(value, null, 2) })) : null;
  clear(box, block("summary", "summary (all fields)", run.summary), block("spec", "spec", run.spec), block("dataset", "dataset", run.dataset_info));
}

boot(render);

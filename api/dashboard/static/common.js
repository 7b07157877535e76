// Shared by every page: the API token, calls to /api/v1, DOM building, formatting, polling.
// Data from the API is only ever put into the page as text (textContent), never as HTML.

const TOKEN_KEY = "eos.token";
const API = "/api/v1";
export const ACTIVE = new Set(["queued", "running"]);
export const STATUSES = ["queued", "running", "completed", "diverged", "failed", "cancelled"];

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

export function token() {
  return localStorage.getItem(TOKEN_KEY) || "";
}

/**
 * The token only ever travels in the Authorization header: a token in the address (`?token=...`, as an
 * old link may carry) would be written to the server's access log, so it is not taken; it is removed
 * from the address bar and the page says why. Returns whether there was one.
 */
function refuseQueryToken() {
  const url = new URL(location.href);
  if (!url.searchParams.has("token")) return false;
  url.searchParams.delete("token");
  history.replaceState(null, "", url.pathname + url.search + url.hash);
  return true;
}

/** GET /api/v1{path}?{params}; resolves to the JSON body or throws ApiError. */
export async function api(path, params = {}) {
  if (!token()) throw new ApiError(401, "no API token: paste one in the box at the top right");
  const url = new URL(API + path, location.origin);
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, String(value));
  }
  let response;
  try {
    response = await fetch(url, { headers: { Authorization: `Bearer ${token()}`, Accept: "application/json" } });
  } catch (err) {
    throw new ApiError(0, `the server did not answer (${err.message})`);
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch {
      /* not JSON: keep the status text */
    }
    throw new ApiError(response.status, detail);
  }
  return response.json();
}

/** h("a", {href, class, text, title, data: {...}, on: {click}}, ...children) */
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key === "data") for (const [k, v] of Object.entries(value)) node.dataset[k] = String(v);
    else if (key === "on") for (const [k, fn] of Object.entries(value)) node.addEventListener(k, fn);
    else if (key === "style") node.style.cssText = value;
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

/** Numbers the way a person reads them: 4 significant digits, exponents for the very small or large. */
export function fmt(value, digits = 4) {
  if (value === null || value === undefined || (typeof value === "number" && Number.isNaN(value))) return "—";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "object") return JSON.stringify(value); // a swept sub-object: {"lr":1}
  if (typeof value !== "number") return String(value);
  if (!Number.isFinite(value)) return value > 0 ? "∞" : "−∞";
  if (Number.isInteger(value) && Math.abs(value) < 1e7) return String(value);
  const abs = Math.abs(value);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e6)) return value.toExponential(digits - 1);
  return String(Number(value.toPrecision(digits)));
}

/** A [low, high] interval; a missing upper end is unbounded. */
export function interval(pair, digits) {
  if (!Array.isArray(pair)) return "—";
  return `[${fmt(pair[0], digits)}, ${pair[1] == null ? "∞" : fmt(pair[1], digits)}]`;
}

export function fmtTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function fmtDuration(startIso, endIso) {
  if (!startIso) return "—";
  const seconds = ((endIso ? new Date(endIso) : new Date()) - new Date(startIso)) / 1000;
  if (seconds < 90) return `${seconds.toFixed(1)} s`;
  if (seconds < 5400) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

/**
 * Why a finished run did not complete, as the CLI and the Python client say it: "failed at step 12 of
 * 200: ValueError: …" (the error's type and message, and the step reached) or "diverged at step N";
 * null for a run that completed or has not finished.
 */
export function failureText(run) {
  const finished = !ACTIVE.has(run.status);
  if (run.status === "failed" || (run.error && finished)) {
    const where = run.steps ? `at step ${run.step} of ${run.steps}` : `at step ${run.step}`;
    return `${run.status} ${where}: ${run.error || "no error recorded"}`;
  }
  if (run.status === "diverged") {
    const at = run.summary && run.summary.diverged_step != null ? run.summary.diverged_step : run.step;
    return `diverged at step ${at} (the iterate or its loss is no longer finite)`;
  }
  return null;
}

/** The error's type without its module: "eos_core.data.files.DatasetFilesMissing: …" -> "DatasetFilesMissing". */
export function errorType(error) {
  if (!error) return "";
  const head = error.split(":")[0].trim();
  return /^[\w.]+$/.test(head) ? head.split(".").pop() : "error";
}

export function statusBadge(status) {
  return h("span", { class: `status s-${status}`, text: status, data: { status } });
}

export function progressBar(fraction) {
  const pct = Math.max(0, Math.min(1, fraction || 0)) * 100;
  return h("span", { class: "progress", title: `${pct.toFixed(0)}%` }, h("span", { style: `width:${pct}%` }));
}

export function tags(list) {
  return (list || []).map((t) => h("span", { class: "tag", text: t }));
}

const SHORT = { "optimizer.lr": "η", "optimizer.batch_size": "B", "optimizer.steps": "steps", "seed": "seed" };

/** A dotted spec path as a short label: optimizer.lr -> η, optimizer.batch_size -> B. */
export function shortName(path) {
  return SHORT[path] || path.split(".").pop();
}

/** Swept params with a swept sub-object's keys as dotted paths: {optimizer: {lr: 1}} -> {"optimizer.lr": 1}. */
export function flatParams(params, prefix = "") {
  const out = {};
  for (const [key, value] of Object.entries(params || {})) {
    if (value && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length) Object.assign(out, flatParams(value, `${prefix}${key}.`));
    else out[`${prefix}${key}`] = value;
  }
  return out;
}

export function paramsText(params) {
  const parts = Object.entries(flatParams(params)).map(([k, v]) => `${shortName(k)}=${fmt(v)}`);
  return parts.join(" · ");
}

/** The step actually applied (η·m for the mean-field two-layer net unless lr_scaling is none). */
export function effectiveLr(run) {
  const applied = run.summary && run.summary.lr_effective;
  if (typeof applied === "number") return applied;
  const spec = run.spec || {};
  const lr = spec.optimizer ? spec.optimizer.lr : undefined;
  if (typeof lr !== "number") return null;
  const scaled = spec.model && spec.model.kind === "two_layer" && (spec.optimizer.lr_scaling || "auto") === "auto";
  return scaled ? lr * spec.model.width : lr;
}

/** Seconds between polls: `?poll=S` in the address overrides the default of 3. */
export function pollInterval() {
  const given = Number(new URLSearchParams(location.search).get("poll"));
  return Number.isFinite(given) && given >= 0.2 ? given * 1000 : 3000;
}

/**
 * Call `refresh()` now and then every few seconds while it resolves to true (something shown
 * is queued or running). Errors are shown in `banner` and polling goes on; hidden tabs skip.
 */
export function keepFresh(refresh, banner) {
  let timer = null;
  const tick = async () => {
    timer = null;
    if (document.hidden) {
      timer = setTimeout(tick, pollInterval());
      return;
    }
    let again = false;
    try {
      again = await refresh();
      banner.classList.add("hidden");
    } catch (err) {
      // Lost connection and server errors may pass; a refused token or a bug in this page will not.
      again = err instanceof ApiError && (err.status === 0 || err.status >= 500);
      showError(banner, err);
    }
    document.body.dataset.live = again ? "polling" : "idle";
    if (again) timer = setTimeout(tick, pollInterval());
  };
  return tick();
}

export function showError(banner, err) {
  banner.classList.remove("hidden");
  if (!(err instanceof ApiError)) console.error(err); // a bug in the page: keep its stack trace
  if (err instanceof ApiError && err.status === 401) {
    clear(banner, "The API refused the token: ", err.detail, ". Paste a valid one at the top right.");
    renderAuth(true);
  } else if (err instanceof ApiError && err.status === 0) {
    clear(banner, "Connection lost, retrying: ", err.detail);
  } else {
    clear(banner, err instanceof ApiError ? err.detail : String(err));
  }
}

/** The token box: who is signed in, or (when there is no token or it was refused) a field for one. */
function renderAuth(askAgain = false) {
  const box = document.getElementById("auth");
  if (token() && !askAgain) {
    const shown = `token …${token().slice(-4)}`;
    const out = h("button", {
      text: "Sign out",
      on: {
        click: () => {
          localStorage.removeItem(TOKEN_KEY);
          location.reload();
        },
      },
    });
    clear(box, h("span", { text: shown, title: "stored in this browser (localStorage)" }), out);
    return;
  }
  const input = h("input", { type: "password", placeholder: "API token (eos token create NAME)", autocomplete: "off", id: "token-input" });
  const form = h(
    "form",
    {
      class: "row",
      on: {
        submit: (event) => {
          event.preventDefault();
          if (!input.value.trim()) return;
          localStorage.setItem(TOKEN_KEY, input.value.trim());
          location.reload();
        },
      },
    },
    input,
    h("button", { type: "submit", text: "Use token" }),
  );
  clear(box, form);
}

/**
 * Page start-up: drop a ?token= (never taken), draw the token box, then `render(main, banner)`.
 * Without a token the page explains how to get one instead of calling the API.
 */
export async function boot(render) {
  const inUrl = refuseQueryToken();
  renderAuth();
  const main = document.getElementById("main");
  const banner = h("div", { class: "notice error hidden", id: "banner", role: "alert" });
  const urlNotice = inUrl
    ? h(
        "div",
        { class: "notice warn", id: "token-in-url" },
        "A token in the address is not used: the server logs addresses. Paste it in the box at the top right, and replace it with ",
        h("code", { text: "eos token rotate ID" }),
        ", as it may be in the server's log now.",
      )
    : null;
  if (!token()) {
    clear(
      main,
      urlNotice,
      h(
        "div",
        { class: "notice warn" },
        "The dashboard reads the eos API with your token. Create one with ",
        h("code", { text: "eos users create NAME" }),
        " (a new user) or ",
        h("code", { text: "eos token create NAME" }),
        " and paste it in the box at the top right (it stays in this browser and is sent only in the Authorization header).",
      ),
    );
    document.body.dataset.ready = "1";
    return;
  }
  clear(main, urlNotice, banner);
  try {
    await render(main, banner);
  } catch (err) {
    showError(banner, err);
  }
  document.body.dataset.ready = "1";
}

// `/`: the experiments, newest first, with filters, paging, and which ones have active runs.
import { api, boot, clear, fmtTime, h, keepFresh, shortName, STATUSES, statusBadge, tags } from "./common.js";

const PAGE = 50;

function filtersFromUrl() {
  const q = new URLSearchParams(location.search);
  return {
    name: q.get("name") || "",
    tag: q.get("tag") || "",
    owner: q.get("owner") || "",
    status: q.get("status") || "",
    offset: Math.max(0, Number(q.get("offset")) || 0),
  };
}

function urlFor(filters) {
  const q = new URLSearchParams(location.search);
  for (const [key, value] of Object.entries(filters)) {
    if (value) q.set(key, String(value));
    else q.delete(key);
  }
  const text = q.toString();
  return text ? `/?${text}` : "/";
}

function sweepText(sweep) {
  const axes = Object.entries(sweep || {});
  if (!axes.length) return "single run";
  const names = axes.map(([path, values]) => `${shortName(path)} (${values.length})`).join(" × ");
  const cells = axes.reduce((n, [, values]) => n * values.length, 1);
  return `${names} = ${cells} runs`;
}

function specText(spec) {
  const parts = [];
  if (spec.model && spec.model.kind) parts.push(spec.model.kind);
  if (spec.dataset && spec.dataset.kind) parts.push(spec.dataset.kind);
  if (spec.optimizer && spec.optimizer.steps) parts.push(`${spec.optimizer.steps} steps`);
  return parts.join(" · ");
}

function filterForm(filters) {
  const field = (name, placeholder) => h("input", { name, placeholder, value: filters[name], size: 14 });
  const status = h(
    "select",
    { name: "status" },
    h("option", { value: "", text: "any status" }),
    STATUSES.map((s) => h("option", { value: s, text: `has ${s}`, selected: filters.status === s })),
  );
  return h(
    "form",
    {
      class: "row card",
      on: {
        submit: (event) => {
          event.preventDefault();
          const data = new FormData(event.target);
          location.href = urlFor({ ...Object.fromEntries(data.entries()), offset: 0 });
        },
      },
    },
    field("name", "name contains"),
    field("tag", "tag"),
    field("owner", "owner"),
    status,
    h("button", { type: "submit", text: "Filter" }),
    h("a", { href: "/", text: "clear" }),
  );
}

async function render(main, banner) {
  const filters = filtersFromUrl();
  const summary = h("div", { class: "muted small", id: "summary" });
  const table = h("table", { class: "data", id: "experiments" });
  const pager = h("div", { class: "row", id: "pager" });
  main.append(
    h("div", { class: "row" }, h("h1", { text: "Experiments" }), h("span", { class: "spacer" }), summary),
    filterForm(filters),
    h("div", { class: "card" }, table, pager),
  );

  const refresh = async () => {
    const params = { limit: PAGE, offset: filters.offset, name: filters.name, tag: filters.tag, owner: filters.owner, status: filters.status };
    // Which experiments have queued or running runs (the list itself carries no runs).
    const [page, running, queued] = await Promise.all([
      api("/experiments", params),
      api("/experiments", { status: "running", limit: 500 }),
      api("/experiments", { status: "queued", limit: 500 }),
    ]);
    const active = new Map();
    for (const e of queued.items) active.set(e.id, "queued");
    for (const e of running.items) active.set(e.id, "running");
    drawTable(table, page.items, active);
    drawPager(pager, page, filters);
    const activeCount = page.items.filter((e) => active.has(e.id)).length;
    clear(summary, `${page.total} experiments`, activeCount ? ` · ${activeCount} on this page with active runs (updating)` : "");
    return active.size > 0;
  };
  await keepFresh(refresh, banner);
}

function drawTable(table, items, active) {
  const head = h("thead", {}, h("tr", {}, ["ID", "Name", "Owner", "Tags", "Model · data", "Sweep", "Created", "Activity"].map((t) => h("th", { text: t }))));
  const rows = items.map((e) =>
    h(
      "tr",
      { data: { id: e.id } },
      h("td", { class: "num" }, h("a", { href: `/experiments/${e.id}`, text: `#${e.id}` })),
      h("td", {}, h("a", { href: `/experiments/${e.id}`, text: e.name })),
      h("td", { text: e.owner }),
      h("td", {}, tags(e.tags)),
      h("td", { class: "muted", text: specText(e.spec || {}) }),
      h("td", { text: sweepText(e.sweep) }),
      h("td", { class: "muted", text: fmtTime(e.created_at) }),
      h("td", {}, active.has(e.id) ? statusBadge(active.get(e.id)) : ""),
    ),
  );
  const body = rows.length ? rows : [h("tr", {}, h("td", { colspan: 8, class: "muted", text: "No experiments match." }))];
  clear(table, head, h("tbody", {}, body));
}

function drawPager(pager, page, filters) {
  const from = page.total ? page.offset + 1 : 0;
  const to = page.offset + page.items.length;
  const prev = page.offset > 0 ? h("a", { href: urlFor({ ...filters, offset: Math.max(0, page.offset - PAGE) }), text: "← newer" }) : null;
  const next = to < page.total ? h("a", { href: urlFor({ ...filters, offset: to }), text: "older →" }) : null;
  clear(pager, h("span", { class: "muted small", text: `${from}–${to} of ${page.total}` }), prev, next);
}

boot(render);

// rnnlab dashboard: plain JS over the REST API, hash-routed views, charts by Apache ECharts (vendored).
// The API key lives in this tab's sessionStorage and only ever travels in the Authorization header.
// All user-controlled text (names, columns, messages) is inserted as text nodes by h(), never as HTML.
"use strict";

const { fmt } = Charts;
const KEY_STORAGE = "rnnlab.key";
const state = { key: sessionStorage.getItem(KEY_STORAGE) || "", charts: [], stream: null, timer: null, ticked: new Set(), sweepNames: {}, datasetNames: {} };
// Older versions kept the key in localStorage (shared by every tab, kept forever): drop it.
localStorage.removeItem(KEY_STORAGE);
const darkQuery = window.matchMedia("(prefers-color-scheme: dark)");

// ---------------------------------------------------------------- DOM helpers
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
const $ = (sel, root = document) => root.querySelector(sel);
function say(text) { $("#message").textContent = text || ""; }
function docsLink(text = "API docs") { return h("a", { href: "/docs", target: "_blank", rel: "noopener" }, text); }
function empty(...children) { return h("div", { class: "empty" }, ...children); }
function statusPill(status) { return h("span", { class: `status ${status}` }, status); }
function progressBar(job) {
  const { epoch, epochs } = job.progress;
  return h("span", { class: "progress", title: `epoch ${epoch} of ${epochs}` },
    h("progress", { max: Math.max(epochs, 1), value: epoch }), h("small", {}, `${epoch}/${epochs}`));
}
function when(iso) { return iso ? new Date(iso).toLocaleString() : "–"; }
// In tables: to the minute, the full time on hover.
function whenCell(iso) {
  return h("td", { title: when(iso), class: "when" }, iso ? new Date(iso).toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" }) : "–");
}
function jobLabel(job) {
  // Sweep jobs share a name: a setting and seed say which one a row is.
  if (job.sweep_id && job.setting) {
    return `${settingLabel(job.setting)} · seed ${job.spec.training.seed}`;
  }
  return job.name || job.id.slice(0, 8);
}
// The job list carries the task inside the spec.
function taskOf(job) { return job.spec?.task; }
function mainMetric(task) { return task === "classification" || task === "tagging" ? "accuracy" : "rmse"; }
function section(title, ...children) { return h("section", {}, title ? h("h2", {}, title) : null, ...children); }
function tableWrap(table) { return h("div", { class: "table-wrap" }, table); }

// ---------------------------------------------------------------- API
class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
  }
}

// GET /metrics compares at most this many jobs (the API's too_many_jobs): the most that can be ticked.
const COMPARE_LIMIT = 50;
// Requests one view sends at once when it needs many (a job each): the API allows 100 a second per key.
const POOL_SIZE = 6;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.key}`, ...(options.headers || {}) };
  if (options.body && !(options.body instanceof FormData)) headers["Content-Type"] = "application/json";
  let response;
  for (let attempt = 0; ; attempt++) {
    response = await fetch(`/api/v1${path}`, { ...options, headers });
    // Over the key's rate limit (429): wait the Retry-After the API names and ask again (a 429 is
    // answered before anything is done, so a repeated POST does nothing twice).
    if (response.status !== 429 || attempt >= 4) break;
    const after = Number(response.headers.get("retry-after"));
    const seconds = Number.isFinite(after) && after >= 0 ? after : 1;
    if (seconds > 30) break;
    await sleep(1000 * Math.max(seconds, 0.25) + Math.random() * 250);
  }
  const isJson = response.headers.get("content-type")?.includes("json");
  if (!response.ok) throw new ApiError(response.status, isJson ? await response.json().catch(() => null) : null);
  if (options.raw) return response;
  return isJson ? response.json() : response.text();
}

// worker(item) for every item, at most `size` at a time; the results in the items' order.
async function inPool(items, worker, size = POOL_SIZE) {
  const results = new Array(items.length);
  let next = 0;
  const run = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await worker(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(size, items.length) }, run));
  return results;
}

// Downloads go through fetch (the key is a header, never a URL) and a local blob: URL.
async function download(path, fallbackName, extension = null) {
  const response = await api(path, { raw: true });
  const disposition = response.headers.get("content-disposition") || "";
  const name = /filename="?([^";]+)"?/.exec(disposition)?.[1] || fallbackName;
  // A server that predates a format ignores ?format= and sends another one: say so, save nothing.
  if (extension && !name.endsWith(`.${extension}`)) throw new Error(`this server does not offer .${extension} (it sent ${name})`);
  const url = URL.createObjectURL(await response.blob());
  const link = h("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
  return name;
}

// ---------------------------------------------------------------- charts
function chartBox(id, height = 320) { return h("div", { class: "chart", id, style: `height:${height}px` }); }

function mountChart(el, option) {
  if (!el) return null;
  const chart = echarts.init(el, darkQuery.matches ? "dark" : null, { renderer: "canvas" });
  chart.setOption(option);
  const observer = new ResizeObserver(() => chart.resize());
  observer.observe(el);
  state.charts.push({ chart, observer });
  return chart;
}

function unmountChart(chart) {
  const at = state.charts.findIndex((c) => c.chart === chart);
  if (at >= 0) { state.charts[at].observer.disconnect(); state.charts.splice(at, 1); }
  chart.dispose();
}

function disposeCharts() {
  for (const { chart, observer } of state.charts) { observer.disconnect(); chart.dispose(); }
  state.charts = [];
}

// ---------------------------------------------------------------- routing
// A hand-edited or cut-off link (#/jobs/%E0%A4%A) is not valid percent-encoding: `invalid` says so
// instead of an exception that would leave the previous view on the page.
function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "") || "jobs";
  const [path, query = ""] = raw.split("?");
  let invalid = false;
  const parts = path.split("/").filter(Boolean).map((p) => {
    try { return decodeURIComponent(p); } catch { invalid = true; return p; }
  });
  return { parts, params: new URLSearchParams(query), invalid };
}

function navigate(hash) { if (location.hash === hash) route(); else location.hash = hash; }

// A route that finishes after a newer one started must not draw over it (a slow job page replacing
// the datasets page the user has moved on to): its view stops it at its next write.
class StaleRoute extends Error {}
let routeGeneration = 0;

function routedView(root, generation) {
  const current = () => { if (generation !== routeGeneration) throw new StaleRoute(); };
  return {
    // (a null or false is a part left out, not the text "null")
    replaceChildren: (...nodes) => { current(); root.replaceChildren(...nodes.filter((n) => n !== null && n !== false)); },
    append: (...nodes) => { current(); root.append(...nodes.filter((n) => n !== null && n !== false)); },
    check: current,  // before writing into nodes already on the page
  };
}

async function route() {
  const generation = ++routeGeneration;
  if (state.stream) { state.stream.abort(); state.stream = null; }
  clearInterval(state.timer);
  disposeCharts();
  say("");
  const view = routedView($("#view"), generation);
  const { parts, params, invalid } = parseHash();
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.view === parts[0]));
  if (invalid) {
    view.replaceChildren(empty(h("h2", {}, "Invalid link"),
      h("p", { class: "error" }, "This address is not valid (a broken % escape): ", h("code", {}, location.hash)),
      h("p", {}, h("a", { href: "#/jobs" }, "Back to the jobs"))));
    return;
  }
  if (!state.key) {
    view.replaceChildren(empty(
      h("h2", {}, "Enter an API key"),
      h("p", {}, "Create one on the server with ", h("code", {}, "rnnlab keys create --project NAME"),
        " and paste it above. It is kept in this browser tab only (sessionStorage)."),
      h("p", {}, "The same API is documented at ", docsLink("/docs"), "."),
    ));
    return;
  }
  view.replaceChildren(h("p", { class: "loading" }, "Loading…"));
  try {
    if (parts[0] === "jobs" && parts[1]) await jobView(view, parts[1]);
    else if (parts[0] === "compare") await compareView(view, (params.get("jobs") || "").split(",").filter(Boolean));
    else if (parts[0] === "sweeps" && parts[1]) await sweepView(view, parts[1]);
    else if (parts[0] === "sweeps") await sweepsView(view, params);
    else if (parts[0] === "datasets" && parts[1]) await datasetView(view, parts[1]);
    else if (parts[0] === "datasets") await datasetsView(view, params);
    else await jobsView(view, params);
  } catch (err) {
    if (err instanceof StaleRoute || generation !== routeGeneration) return;
    view.replaceChildren(empty(h("h2", {}, err.status === 404 ? "Not found" : "Could not load this page"),
      h("p", { class: "error" }, err.message),
      h("p", {}, h("a", { href: "#/jobs" }, "Back to the jobs"))));
  }
}

// ---------------------------------------------------------------- jobs list
// The page's cursor is in the address (links, reloads and Back keep the page); the cursors of earlier
// pages are remembered per filter, so "Previous" can step back; after a reload it goes to the first page.
const listState = { cursors: new Map(), expanded: new Set() };
const LIST_DEFAULTS = { sort: "-created_at", limit: "50", page: "1" };

async function jobsView(view, params) {
  const where = params.get("where") || "";
  const sort = params.get("sort") || "-created_at";
  const status = params.get("status") || "";
  const datasetId = params.get("dataset") || "";
  const limit = Number(params.get("limit") || 50);
  const cursor = params.get("cursor") || "";
  const pageNo = Math.max(1, Number(params.get("page") || 1) || 1);
  const filterKey = JSON.stringify([where, sort, status, datasetId, limit]);
  if (!listState.cursors.has(filterKey)) listState.cursors.set(filterKey, {});
  const known = listState.cursors.get(filterKey);  // page number -> its cursor
  if (cursor) known[pageNo] = cursor;
  const setQuery = (changes) => {
    // A new filter, sort or page size starts at page 1; only the pager passes a cursor.
    const next = new URLSearchParams({ where, sort, status, dataset: datasetId, limit: String(limit), cursor: "", page: "", ...changes });
    for (const [k, v] of [...next]) if (!v || LIST_DEFAULTS[k] === v) next.delete(k);
    navigate(`#/jobs${next.toString() ? `?${next}` : ""}`);
  };

  const whereInput = h("input", { id: "where", type: "search", value: where, size: 48, placeholder: 'test.rmse < 0.5 and model.cell in ("lstm","gru")', "aria-label": "where" });
  const whereError = h("p", { id: "where-error", class: "error inline", role: "alert" });
  const statusSelect = h("select", { id: "status-filter", "aria-label": "status",
    onchange: (e) => setQuery({ status: e.target.value }) },
    ["", "queued", "running", "succeeded", "failed", "cancelled", "pruned"].map((s) => h("option", { value: s, selected: s === status }, s || "any status")));
  await Promise.all([loadDatasetNames(), datasetId ? ensureDatasetNames([datasetId]) : null]);
  // Long names are cut in the option (the select would otherwise be as wide as the longest one).
  // The newest datasets, and older ones this page's jobs use (their names arrive with the rows).
  const datasetOptions = () => {
    const named = Object.values(state.datasetNames).filter((d) => d.name != null)
      .sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
    return [h("option", { value: "" }, "any dataset"),
      ...named.map((d) => h("option", { value: d.id, selected: d.id === datasetId, title: d.name }, shortText(d.name, 40))),
      datasetId && !state.datasetNames[datasetId]?.name ? h("option", { value: datasetId, selected: true }, datasetId.slice(0, 8)) : null,
      state.moreDatasets ? h("option", { disabled: true, value: "-" }, `(only the ${DATASET_NAMES_LIMIT} newest and those listed below: an older one's page links to its jobs)`) : null]
      .filter(Boolean);
  };
  const datasetSelect = h("select", { id: "dataset-filter", "aria-label": "dataset", title: state.datasetNames[datasetId]?.name || null,
    onchange: (e) => setQuery({ dataset: e.target.value }) }, datasetOptions());
  let knownDatasets = Object.keys(state.datasetNames).length;
  const compareButton = h("button", { id: "compare-button", type: "button", disabled: state.ticked.size < 2,
    onclick: () => navigate(`#/compare?jobs=${[...state.ticked].join(",")}`) }, `Compare ticked (${state.ticked.size})`);
  const tickNote = h("span", { id: "tick-note", class: "hint", role: "status" });
  const toolbar = h("form", { class: "toolbar", onsubmit: (e) => { e.preventDefault(); setQuery({ where: whereInput.value.trim() }); } },
    h("label", {}, "where ", whereInput), h("button", { type: "submit" }, "Filter"),
    where ? h("button", { type: "button", onclick: () => setQuery({ where: "" }) }, "Clear") : null,
    statusSelect, datasetSelect, compareButton, tickNote);
  const tableHolder = h("div");
  const pager = h("div", { class: "pager" });
  view.replaceChildren(section("Jobs", toolbar, whereError, tableHolder, pager));

  const query = new URLSearchParams({ limit: String(limit), sort });
  if (where) query.set("where", where);
  if (status) query.set("status", status);
  if (datasetId) query.set("dataset_id", datasetId);
  if (cursor) query.set("cursor", cursor);
  const load = async () => {
    let page;
    try {
      page = await api(`/jobs?${query}`);
    } catch (err) {
      if (err.status === 400) {  // the where language's own message, next to the box that caused it
        view.check();
        whereError.textContent = err.message;
        whereInput.setAttribute("aria-invalid", "true");
        tableHolder.replaceChildren(empty("Fix the filter to see jobs. Fields: ", h("code", {}, "test.rmse"), ", ",
          h("code", {}, "model.cell"), ", ", h("code", {}, "status"), " …; operators = != < <= > >= in, not in, contains (", h("code", {}, 'name contains "lstm"'), "), and, or, not."));
        return null;
      }
      throw err;
    }
    // Sweep names only when this page shows a sweep not named yet (not on every refresh); the names of
    // datasets older than the newest ones loaded above, one by one (and remembered).
    await Promise.all([page.items.some((j) => j.sweep_id && !state.sweepNames[j.sweep_id]) ? loadSweepNames() : null,
      ensureDatasetNames(page.items.map((j) => j.dataset_id))]);
    view.check();
    if (Object.keys(state.datasetNames).length !== knownDatasets && document.activeElement !== datasetSelect) {
      knownDatasets = Object.keys(state.datasetNames).length;
      datasetSelect.replaceChildren(...datasetOptions());
    }
    // A refresh redraws the rows: whatever had the keyboard focus in them gets it back.
    const focus = focusKey($("#view"));
    if (!page.items.length) {
      tableHolder.replaceChildren(where || status || datasetId || cursor
        ? empty("No job matches this filter.")
        : empty(h("h3", {}, "No jobs yet"),
          h("p", {}, "Upload a dataset and start a job from the ", h("a", { href: "#/datasets" }, "datasets page"),
            ", or POST a spec to ", h("code", {}, "/api/v1/jobs"), " (see the ", docsLink(), ").")));
    } else {
      tableHolder.replaceChildren(jobsTable(page.items, sort, (s) => setQuery({ sort: s }), compareButton));
    }
    const previous = pageNo <= 2 ? {} : known[pageNo - 1] ? { cursor: known[pageNo - 1], page: String(pageNo - 1) } : null;
    pager.replaceChildren(
      h("button", { type: "button", id: "previous-page", disabled: pageNo === 1, onclick: () => setQuery(previous || {}) },
        previous ? "‹ Previous" : "« First page"),
      h("span", { id: "page-number" }, `page ${pageNo}`),
      h("button", { type: "button", id: "next-page", disabled: !page.next_cursor,
        onclick: () => setQuery({ cursor: page.next_cursor, page: String(pageNo + 1) }) }, "Next ›"),
      h("label", {}, " per page ", h("select", { id: "page-size", onchange: (e) => setQuery({ limit: e.target.value }) },
        [25, 50, 100, 200].map((n) => h("option", { value: n, selected: n === limit }, n)))),
    );
    restoreFocus($("#view"), focus);
    return page;
  };
  const moving = (page) => page?.items.some((j) => ["queued", "running"].includes(j.status));
  // Refresh the rows in place while something on this page is still moving: the scroll position stays,
  // a focused link, button or checkbox keeps the focus (found again by its row and place), and nothing
  // is redrawn while a control one types into or chooses from has it (the where box, a select).
  // It stops once everything on the page has ended; a slow answer is not overtaken by the next tick.
  if (moving(await load())) {
    let busy = false;
    const timer = setInterval(async () => {
      const focused = document.activeElement;
      if (busy || (focused && $("#view").contains(focused) && focused.matches("input:not([type=checkbox]), select, textarea"))) return;
      busy = true;
      try {
        if (!moving(await load())) clearInterval(timer);
      } catch (err) {
        if (err instanceof StaleRoute) clearInterval(timer);
        else say(`could not refresh the list: ${err.message}`);
      } finally { busy = false; }
    }, 4000);
    state.timer = timer;
  }
}

async function loadSweepNames() {
  try {
    const sweeps = await api("/sweeps?limit=500");
    for (const s of sweeps.items) state.sweepNames[s.id] = s;
  } catch { /* names are a nicety: ids still work */ }
}

// The newest datasets by name (for the dataset filter); older ones a page refers to are asked for one by
// one by ensureDatasetNames and remembered.
const DATASET_NAMES_LIMIT = 500;  // the API's largest page
async function loadDatasetNames() {
  try {
    const datasets = await api(`/datasets?limit=${DATASET_NAMES_LIMIT}`);
    for (const d of datasets.items) state.datasetNames[d.id] = d;
    state.moreDatasets = Boolean(datasets.next_cursor);
  } catch { /* as above */ }
}

async function ensureDatasetNames(ids) {
  const unknown = [...new Set(ids)].filter((id) => id && !Object.hasOwn(state.datasetNames, id));
  await inPool(unknown, async (id) => {
    try {
      state.datasetNames[id] = await api(`/datasets/${encodeURIComponent(id)}`);
    } catch (err) {
      if (err.status === 404) state.datasetNames[id] = { id, name: null };  // deleted: its id is shown
    }
  });
}

function shortText(text, max) { const s = String(text ?? ""); return s.length > max ? `${s.slice(0, max - 1)}…` : s; }

// Where the keyboard focus is inside `root`, in terms that survive a redraw of the rows: an element's
// id, a sort header, or a row (data-id / data-sweep) and the place among that row's controls.
const FOCUSABLE = "a[href], button, input, select, textarea";
function focusKey(root) {
  const el = document.activeElement;
  if (!el || el === document.body || !root.contains(el)) return null;
  if (el.id) return { id: el.id };
  const th = el.closest("th[data-sort]");
  if (th) return { selector: `th[data-sort="${CSS.escape(th.dataset.sort)}"] button`, index: 0 };
  const row = el.closest("tr[data-id], tr[data-sweep]");
  if (!row) return null;
  const selector = row.dataset.id ? `tr[data-id="${CSS.escape(row.dataset.id)}"]` : `tr[data-sweep="${CSS.escape(row.dataset.sweep)}"]`;
  return { selector, index: [...row.querySelectorAll(FOCUSABLE)].indexOf(el) };
}

function restoreFocus(root, key) {
  if (!key || (document.activeElement && document.activeElement !== document.body && root.contains(document.activeElement))) return;
  let el = null;
  if (key.id) el = document.getElementById(key.id);
  else {
    const holder = root.querySelector(key.selector);
    el = holder?.matches(FOCUSABLE) ? holder : holder?.querySelectorAll(FOCUSABLE)[key.index];
  }
  el?.focus({ preventScroll: true });
}

function jobsTable(jobs, sort, setSort, compareButton) {
  const metrics = [...new Set(jobs.map((j) => mainMetric(taskOf(j))))].sort().reverse().flatMap((m) => [`test.${m}`, `val.${m}`]);
  const header = (label, key) => {
    if (!key) return h("th", {}, label);
    const active = sort.replace(/^-/, "") === key;
    const descending = sort.startsWith("-");
    const next = active && !descending ? `-${key}` : key;
    // The button makes the header reachable and pressable from the keyboard; the click reaches the th.
    return h("th", { class: `sortable${active ? " sorted" : ""}`, "data-sort": key, "aria-sort": active ? (descending ? "descending" : "ascending") : "none",
      onclick: () => setSort(next) }, h("button", { type: "button", class: "sort", title: `sort by ${label}` }, label, active ? (descending ? " ▼" : " ▲") : ""));
  };
  const thead = h("thead", {}, h("tr", {}, h("th", {}, ""), header("name", "name"), header("status", "status"), h("th", {}, "cell"),
    h("th", {}, "task"), h("th", {}, "dataset"), h("th", {}, "progress"), metrics.map((m) => header(m, m)), header("created", "created_at")));
  const tbody = h("tbody");
  const datasetCell = (job) => {
    const ds = state.datasetNames[job.dataset_id];
    return h("td", { class: "clip", title: ds?.name || job.dataset_id }, h("a", { href: `#/datasets/${job.dataset_id}`, onclick: (e) => e.stopPropagation() }, ds?.name || job.dataset_id.slice(0, 8)));
  };
  const metricCells = (job) => metrics.map((m) => { const [split, name] = m.split("."); return h("td", { class: "num" }, fmt(job.summary?.[split]?.[name])); });
  const rowOf = (job, child) => {
    const label = child ? jobLabel(job) : (job.name || job.id.slice(0, 8));
    const box = h("input", { type: "checkbox", "aria-label": `tick ${job.name || job.id}${child ? ` (${jobLabel(job)})` : ""}`, "data-job": job.id, checked: state.ticked.has(job.id),
      onclick: (e) => e.stopPropagation(),
      onchange: (e) => {
        const note = $("#tick-note");
        if (note) note.textContent = "";
        if (e.target.checked && state.ticked.size >= COMPARE_LIMIT) {
          // GET /metrics compares at most 50 jobs: a 51st tick would only fail on the compare page.
          e.target.checked = false;
          if (note) note.textContent = `At most ${COMPARE_LIMIT} jobs can be compared at once (the API's limit): untick one first.`;
          return;
        }
        if (e.target.checked) state.ticked.add(job.id); else state.ticked.delete(job.id);
        compareButton.disabled = state.ticked.size < 2;
        compareButton.textContent = `Compare ticked (${state.ticked.size})`;
      } });
    const tr = h("tr", { "data-id": job.id, "data-in-sweep": child ? job.sweep_id : null, class: child ? "child" : "", onclick: () => navigate(`#/jobs/${job.id}`) },
      h("td", {}, box),
      h("td", { class: "clip", title: child ? `${job.name || ""} · ${label}` : label }, h("a", { href: `#/jobs/${job.id}` }, label)),
      h("td", {}, statusPill(job.status)),
      h("td", {}, job.spec?.model?.cell ?? "–"),
      h("td", {}, taskOf(job) ?? "–"),
      datasetCell(job),
      h("td", {}, progressBar(job)),
      metricCells(job),
      whenCell(job.created_at));
    return tr;
  };
  // Jobs of one sweep collapse into one group row, placed where the first of them falls in this order;
  // the row shows that job's metrics (under a metric sort: the sweep's best on this page).
  const groups = new Map();
  for (const job of jobs) if (job.sweep_id) (groups.get(job.sweep_id) || groups.set(job.sweep_id, []).get(job.sweep_id)).push(job);
  const placed = new Set();
  for (const job of jobs) {
    if (!job.sweep_id) { tbody.append(rowOf(job, false)); continue; }
    if (placed.has(job.sweep_id)) continue;
    placed.add(job.sweep_id);
    const members = groups.get(job.sweep_id);
    const sweep = state.sweepNames[job.sweep_id];
    const sweepName = sweep?.name || job.sweep_id.slice(0, 8);
    const open = listState.expanded.has(job.sweep_id);
    const counts = {};
    for (const m of members) counts[m.status] = (counts[m.status] || 0) + 1;
    // Jobs ended of the jobs on this page (by epochs, a finished search whose pruned or early-stopped
    // jobs ran fewer epochs than planned looked unfinished: 40/48).
    const ended = members.filter((m) => !["queued", "running"].includes(m.status)).length;
    const children = members.map((m) => { const r = rowOf(m, true); r.hidden = !open; return r; });
    const toggle = h("button", { type: "button", class: "toggle", "aria-expanded": String(open), "aria-label": `jobs of sweep ${sweepName}`,
      title: "show or hide its jobs",
      onclick: (e) => {
        e.stopPropagation();
        const nowOpen = !listState.expanded.has(job.sweep_id);
        if (nowOpen) listState.expanded.add(job.sweep_id); else listState.expanded.delete(job.sweep_id);
        e.currentTarget.setAttribute("aria-expanded", String(nowOpen));
        e.currentTarget.textContent = nowOpen ? "▾" : "▸";
        children.forEach((r) => { r.hidden = !nowOpen; });
      } }, open ? "▾" : "▸");
    tbody.append(h("tr", { class: "group", "data-sweep": job.sweep_id },
      h("td", {}, toggle),
      h("td", { class: "clip", title: sweepName }, "sweep ", h("a", { href: `#/sweeps/${job.sweep_id}` }, sweepName),
        h("small", {}, ` · ${members.length} jobs on this page`)),
      h("td", {}, Object.entries(counts).map(([s, n]) => h("span", { class: `status ${s}` }, `${n} ${s}`))),
      h("td", {}, job.spec?.model?.cell ?? "–"),
      h("td", {}, taskOf(job) ?? "–"),
      datasetCell(job),
      h("td", {}, h("span", { class: "progress", title: `${ended} of ${members.length} jobs on this page ended` },
        h("progress", { max: Math.max(members.length, 1), value: ended }), h("small", {}, `${ended}/${members.length} jobs`))),
      // Its first job in the list's order (its best under a metric sort), not a summary of the sweep.
      metricCells(job).map((td) => {
        td.classList.add("group-value");
        td.title = `its first job in this order: ${jobLabel(job)} (the sweep's page has its statistics)`;
        return td;
      }),
      whenCell(job.created_at)));
    tbody.append(...children);
  }
  return tableWrap(h("table", { id: "jobs" }, thead, tbody));
}

// ---------------------------------------------------------------- job page
async function jobView(view, id) {
  const job = await api(`/jobs/${encodeURIComponent(id)}`);
  // Names for the sweep and dataset links (a page opened directly has not loaded them yet).
  const [metrics] = await Promise.all([api(`/jobs/${job.id}/metrics`),
    job.sweep_id && !state.sweepNames[job.sweep_id] ? loadSweepNames() : null,
    ensureDatasetNames([job.dataset_id])]);
  const evaluation = job.status === "succeeded" ? await api(`/jobs/${job.id}/evaluation`).catch(() => null) : null;
  const head = h("section", { id: "job-head" });
  const curves = h("section", {}, h("h2", {}, "Learning curves"), h("div", { class: "chart-row" }, chartBox("chart-loss"), chartBox("chart-metric")));
  view.replaceChildren(head, curves);
  renderJobHead(head, job);
  // Live updates change the data of the charts already drawn (setOption merges: zoom stays), and wait
  // while the pointer is on a chart, so its tooltip is not swept away; they land when it leaves.
  const drawn = { loss: null, metric: null };
  let pending = null;
  let hovering = false;
  const lossEl = curves.querySelector("#chart-loss");
  const metricEl = curves.querySelector("#chart-metric");
  const drawCurves = (series) => {
    if (!lossEl.isConnected) return;  // a late update for a page the user has left (or that was redrawn)
    if (hovering) { pending = series; return; }
    const finished = !["queued", "running"].includes(job.status);
    const loss = series.filter((s) => s.name === "loss").map((s) => ({ ...s, name: `${s.split} loss` }));
    const other = series.filter((s) => s.name !== "loss" && s.split === "val").map((s) => ({ ...s, name: `${s.split} ${s.name}` }));
    const best = job.summary?.best_epoch ?? null;
    const draw = (key, el, option, none) => {
      if (!option) { if (!drawn[key]) el.replaceChildren(empty(none)); return; }
      // Axes are replaced whole (a one-epoch axis has a fixed range the next must not inherit).
      if (drawn[key]) drawn[key].setOption(option, { replaceMerge: ["xAxis", "yAxis", "series"] });
      else {
        el.replaceChildren();
        drawn[key] = mountChart(el, option);
        el.addEventListener("mouseenter", () => { hovering = true; });
        el.addEventListener("mouseleave", () => { hovering = false; if (pending) { const next = pending; pending = null; drawCurves(next); } });
      }
    };
    draw("loss", lossEl, loss.length && loss.some((s) => s.epochs.length) ? Charts.curves({ series: loss, yName: "loss", bestEpoch: best }) : null,
      finished ? "No epochs recorded." : "No epochs recorded yet.");
    draw("metric", metricEl, other.length ? Charts.curves({ series: other, yName: other.length === 1 ? other[0].name : "validation metric", bestEpoch: best }) : null,
      finished ? "No validation metric recorded." : "No validation metric recorded yet.");
  };
  drawCurves(metrics.series);
  // The evaluation's sections go into a slot, so the end of a live job can fill it in place.
  const evaluationSlot = h("div", { class: "slot", id: "evaluation-slot" });
  view.append(evaluationSlot, specSection(job));
  const showEvaluation = (ev) => {
    if (ev) renderEvaluation(evaluationSlot, ev);
    else evaluationSlot.replaceChildren(section("Evaluation", empty(["queued", "running"].includes(job.status)
      ? "The evaluation appears here when the job has succeeded."
      : `No evaluation: the job ${{ failed: "failed", cancelled: "was cancelled", pruned: "was pruned by its search" }[job.status] || job.status}.`)));
  };
  showEvaluation(evaluation);
  // When a followed job ends, its header (status, downloads) and evaluation are updated where they
  // are: the scroll position, the zoom of the curves and an open "Resolved spec" stay.
  const finish = async (series) => {
    try {
      const fresh = await api(`/jobs/${job.id}`);
      const ev = fresh.status === "succeeded" ? await api(`/jobs/${job.id}/evaluation`).catch((err) => (err.status === 404 ? null : Promise.reject(err))) : null;
      view.check();
      Object.assign(job, fresh);
      renderJobHead(head, job);
      drawCurves(series);  // the best epoch is known now
      evaluationSlot.replaceChildren();
      showEvaluation(ev);
    } catch (err) {
      if (!(err instanceof StaleRoute)) say(`could not load the finished job: ${err.message}`);
    }
  };
  if (["queued", "running"].includes(job.status)) followJob(job, metrics.series, drawCurves, head, finish);
}

function renderJobHead(head, job) {
  const modelError = h("p", { id: "download-error", class: "error inline", role: "alert" });
  const downloads = h("div", { class: "downloads" }, h("span", {}, "Download: "),
    ["pt", "onnx", "safetensors"].map((f) => h("button", { type: "button", "data-format": f, disabled: job.status !== "succeeded",
      title: job.status === "succeeded" ? `the model as .${f}` : "the model exists once the job has succeeded",
      onclick: async () => {
        modelError.textContent = "";
        try { await download(`/jobs/${job.id}/model?format=${f}`, `rnnlab-${job.id}.${f}`, f); } catch (err) { modelError.textContent = `${f}: ${err.message}`; }
      } }, `model .${f}`)),
    h("button", { type: "button", onclick: () => download(`/jobs/${job.id}/metrics?format=csv`, `rnnlab-${job.id}-metrics.csv`).catch((e) => { modelError.textContent = e.message; }) }, "metrics .csv"),
    h("button", { type: "button", onclick: () => download(`/jobs/${job.id}/metrics`, `rnnlab-${job.id}-metrics.json`).catch((e) => { modelError.textContent = e.message; }) }, "metrics .json"));
  const cancel = ["queued", "running"].includes(job.status)
    ? h("button", { type: "button", id: "cancel-job", onclick: async () => { try { await api(`/jobs/${job.id}/cancel`, { method: "POST" }); route(); } catch (err) { say(err.message); } } }, "Cancel")
    : h("button", { type: "button", id: "delete-job", onclick: async () => {
      if (!window.confirm(`Delete job ${job.name || job.id} with its metrics, evaluation and model?`)) return;
      try { await api(`/jobs/${job.id}`, { method: "DELETE" }); state.ticked.delete(job.id); navigate("#/jobs"); } catch (err) { say(err.message); }
    } }, "Delete");
  const sweep = job.sweep_id ? h("span", {}, " · sweep ", h("a", { href: `#/sweeps/${job.sweep_id}` }, state.sweepNames[job.sweep_id]?.name || job.sweep_id.slice(0, 8)), ` · ${jobLabel(job)}`) : null;
  head.replaceChildren(...[
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), " / ", job.id),
    h("h2", { id: "job-title" }, job.name || job.id, " ", statusPill(job.status), cancel),
    h("p", { id: "job-status" }, progressBar(job), ` · ${job.spec.model.cell} h=${job.spec.model.hidden_size} × ${job.spec.model.num_layers}`,
      ` · ${taskOf(job)} on `, h("a", { href: `#/datasets/${job.dataset_id}`, id: "job-dataset" }, state.datasetNames[job.dataset_id]?.name || "its dataset"), sweep,
      ` · attempts ${job.attempts}/${job.max_attempts}`, job.device ? ` · ${job.device}` : "",
      job.train_seconds ? ` · trained in ${fmt(job.train_seconds, 3)} s` : "",
      ` · created ${when(job.created_at)}`, job.finished_at ? ` · finished ${when(job.finished_at)}` : ""),
    job.error ? h("p", { id: "job-error", class: "error" }, h("b", {}, job.error.type), ": ", job.error.message) : null,
    // A queued job no live worker can take (a cuda job with no GPU worker), or a running one whose worker is gone.
    job.waiting_for ? h("p", { id: "job-waiting", class: "noise", role: "status" }, h("b", {}, "Waiting for "), job.waiting_for) : null,
    downloads, modelError].filter(Boolean));  // replaceChildren would print a null as "null"
}

// SSE through fetch: EventSource cannot send an Authorization header, and the key must stay out of URLs.
// A dropped stream is resumed like EventSource would: Last-Event-ID brings only the epochs not yet seen.
async function followJob(job, series, drawCurves, head, finish) {
  const controller = new AbortController();
  state.stream = controller;
  const byKey = new Map(series.map((s) => [`${s.split}.${s.name}`, s]));
  let redraw = null;
  let lastId = null;
  for (let attempt = 0; ; attempt++) {
    try {
      const headers = lastId ? { "Last-Event-ID": lastId } : {};
      const response = await api(`/jobs/${job.id}/events`, { raw: true, signal: controller.signal, headers });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const event = /^event: (.*)$/m.exec(block)?.[1];
          const data = /^data: (.*)$/m.exec(block)?.[1];
          lastId = /^id: (.*)$/m.exec(block)?.[1] || lastId;
          if (!event || !data) continue;
          attempt = 0;
          const payload = JSON.parse(data);
          if (event === "epoch") {
            for (const [split, values] of Object.entries(payload.metrics)) {
              for (const [name, v] of Object.entries(values)) {
                const key = `${split}.${name}`;
                if (!byKey.has(key)) byKey.set(key, { name, split, epochs: [], values: [] });
                const s = byKey.get(key);
                const at = s.epochs.indexOf(payload.epoch);
                if (at >= 0) s.values[at] = v; else { s.epochs.push(payload.epoch); s.values.push(v); }
              }
            }
            clearTimeout(redraw);
            redraw = setTimeout(() => drawCurves([...byKey.values()]), 100);
          } else if (event === "status") {
            Object.assign(job, payload);
            renderJobHead(head, job);
          } else if (event === "end") {
            clearTimeout(redraw);
            if (state.stream === controller) { state.stream = null; finish([...byKey.values()]); }  // the evaluation and downloads are ready now
            return;
          }
        }
      }
    } catch (err) {
      if (err.name === "AbortError") return;
      // A refused stream (the key's stream cap, a revoked key, a deleted job) is not retried.
      if (err instanceof ApiError || attempt >= 5) { say(`live updates stopped: ${err.message}`); return; }
    }
    if (state.stream !== controller) return;
    if (attempt >= 5) { say("live updates stopped: the event stream keeps closing; reload to try again"); return; }
    await new Promise((resolve) => setTimeout(resolve, 1000 * 2 ** Math.min(attempt, 4)));
    if (state.stream !== controller) return;
  }
}

function evaluationTable(ev) {
  const names = Object.keys(ev.metrics.test || ev.metrics.val || {});
  return tableWrap(h("table", { id: "evaluation" },
    h("thead", {}, h("tr", {}, ["metric", "train", "val", "test", `${Math.round(100 * (ev.confidence_level || 0.95))}% CI (test)`].map((t) => h("th", {}, t)))),
    h("tbody", {}, names.map((name) => {
      const ci = ev.intervals?.test?.[name];
      return h("tr", { class: name === ev.main_metric ? "main" : "" }, h("td", {}, name),
        h("td", { class: "num" }, fmt(ev.metrics.train?.[name])), h("td", { class: "num" }, fmt(ev.metrics.val?.[name])),
        h("td", { class: "num" }, h("b", {}, fmt(ev.metrics.test?.[name]))),
        h("td", { class: "num" }, ci ? `[${fmt(ci[0])}, ${fmt(ci[1])}]` : "–"));
    }))));
}

// The evaluation's sections, appended to `slot` (an element already on the page).
function renderEvaluation(slot, ev) {
  const main = ev.main_metric;
  const lowerIsBetter = !["accuracy", "balanced_accuracy", "macro_f1", "span_f1", "r2", "auroc"].includes(main);
  const baselineValues = {};
  for (const [name, b] of Object.entries(ev.baselines || {})) if (typeof b?.[main] === "number") baselineValues[name] = b[main];
  // A lead the paired bootstrap cannot tell from noise is said so (amber), not shown as a plain win.
  const verdicts = h("ul", { class: "verdicts" }, Object.entries(ev.comparison || {}).map(([name, c]) => {
    const noise = c.beats && c.significant === false;
    const diff = c.difference_interval ? `[${fmt(c.difference_interval[0], 3)}, ${fmt(c.difference_interval[1], 3)}]` : null;
    return h("li", { class: noise ? "noise" : c.beats ? "beats" : "loses", title: diff ? `paired 95% interval of model − ${name}: ${diff}` : null },
      `${c.beats ? "beats" : "does not beat"} ${name}: ${main} ${fmt(c.model)} vs ${fmt(c.baseline)}`,
      typeof c.improvement === "number" ? ` (${fmt(100 * Math.abs(c.improvement), 3)}% ${c.improvement >= 0 ? "better" : "worse"})` : "",
      noise ? ` — within noise: the paired 95% interval of the difference ${diff} holds 0` : c.beats && c.significant ? " — beyond noise" : "");
  }));
  const evalSection = section("Evaluation", h("div", { class: "chart-row" },
    h("div", {}, evaluationTable(ev), verdicts, ev.notes?.length ? h("ul", { class: "notes" }, ev.notes.map((n) => h("li", {}, n))) : null),
    h("div", {}, h("h3", {}, "Against baselines"), chartBox("chart-baselines", 60 + 44 * (1 + Object.keys(baselineValues).length)))));
  slot.append(evalSection);
  mountChart($("#chart-baselines"), Charts.baselines({ metric: main, model: ev.metrics.test?.[main], interval: ev.intervals?.test?.[main],
    baselines: baselineValues, lowerIsBetter }));
  if (ev.confusion_matrix) {
    const n = ev.confusion_matrix.labels.length;
    slot.append(section("Confusion matrix (test)", h("div", { class: "square" }, chartBox("chart-confusion", Math.min(160 + 48 * n, 640)))));
    mountChart($("#chart-confusion"), Charts.confusion(ev.confusion_matrix));
  }
  const attr = ev.attribution;
  if (ev.text_attribution) {
    slot.append(textAttributionSection(ev.text_attribution));
  } else if (attr?.importance?.length) {
    const shares = Object.entries(attr.feature_importance || {}).map(([f, v]) => `${f} ${fmt(v, 3)}`).join(" · ");
    slot.append(section("Attribution",
      h("div", { class: "chart-row" },
        h("div", {}, h("h3", {}, "Time steps × features (integrated gradients)"),
          h("p", { class: "hint" }, `${attr.examples} test examples; feature totals: ${shares}`),
          chartBox("chart-attribution", Math.min(120 + 22 * attr.steps, 640))),
        attr.permutation_importance ? h("div", {}, h("h3", {}, "Permutation importance"),
          h("p", { class: "hint" }, `${attr.permutation_examples} test examples; how much worse ${attr.permutation_metric} gets when one feature is shuffled`),
          chartBox("chart-permutation", 60 + 40 * Math.max(1, attr.features.length))) : null)));
    mountChart($("#chart-attribution"), Charts.attribution(attr));
    if (attr.permutation_importance) mountChart($("#chart-permutation"), Charts.permutation({ importance: attr.permutation_importance, metric: attr.permutation_metric }));
  } else {
    // Why there is none is the server's to say (its notes: attribution off, no test windows, a task
    // that has none); without such a note the page does not guess.
    const why = (ev.notes || []).filter((n) => /attribution/i.test(n));
    slot.append(section("Attribution", empty(h("span", { id: "no-attribution" }, why.length ? why.join(" ") : "No attribution for this job."))));
  }
}

// Token scores as highlighted text: green pushes toward the explained output, red away from it;
// the stronger the colour, the larger |score| (relative to the largest in that text).
function highlightedText(example) {
  const top = Math.max(1e-12, ...example.scores.map((v) => Math.abs(v)));
  return h("p", { class: "tokens" }, example.tokens.map((token, i) => {
    const v = example.scores[i];
    const alpha = Math.min(1, Math.abs(v) / top) * 0.75;
    const colour = v >= 0 ? `rgba(46, 160, 67, ${alpha.toFixed(3)})` : `rgba(218, 54, 51, ${alpha.toFixed(3)})`;
    return [h("span", { class: "token", style: `background:${colour}`, title: `${token}: ${fmt(v, 3)}` }, token), " "];
  }));
}

function textAttributionSection(attr) {
  const important = Object.entries(attr.token_importance || {}).map(([t, v]) => `${t} ${fmt(v, 3)}`).join(" · ");
  return section("Attribution",
    h("p", { class: "hint" }, `Integrated gradients over the token embeddings (${attr.explains}; baseline: ${attr.baseline}). `,
      "Green tokens push toward that output, red ones away from it."),
    h("div", { id: "text-attribution" }, attr.examples.map((ex) => h("div", { class: "text-example" },
      h("small", { class: "hint" }, `true ${ex.label} · predicted ${ex.predicted}`), highlightedText(ex)))),
    important ? h("p", { class: "hint" }, `Most important tokens over ${attr.sampled} test texts: ${important}`) : null);
}

function specSection(job) {
  return h("section", {}, h("details", { id: "spec" }, h("summary", {}, "Resolved spec (defaults filled in)"),
    h("pre", {}, JSON.stringify(job.spec, null, 2))));
}

// ---------------------------------------------------------------- compare
function flatten(obj, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(obj || {})) {
    const path = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, path, out); else out[path] = v;
  }
  return out;
}

async function compareView(view, ids) {
  if (ids.length < 1) {
    view.replaceChildren(empty(h("h2", {}, "Nothing to compare"), h("p", {}, "Tick two or more jobs in the ", h("a", { href: "#/jobs" }, "jobs list"), " and press “Compare ticked”.")));
    return;
  }
  // A saved link outlives its jobs: one deleted job is named and left out, the others are compared.
  // GET /metrics takes at most 50 jobs: a longer link compares its first 50 and says so. The
  // evaluations are asked a few at a time (a 429 from the key's rate limit is waited out by api()).
  const all = [...new Set(ids)];
  const unique = all.slice(0, COMPARE_LIMIT);
  // The jobs come in one listing (`where id in (…)`); an id that could not be a job's is missing.
  const asked = unique.filter((id) => /^[A-Za-z0-9_-]{1,64}$/.test(id));
  const listed = asked.length
    ? (await api(`/jobs?limit=${COMPARE_LIMIT}&where=${encodeURIComponent(`id in (${asked.map((id) => `"${id}"`).join(", ")})`)}`)).items
    : [];
  const byId = new Map(listed.map((j) => [j.id, j]));
  const missing = unique.filter((id) => !byId.has(id));
  const jobs = unique.filter((id) => byId.has(id)).map((id) => byId.get(id));
  if (!jobs.length) throw Object.assign(new Error(`none of these jobs exists any more: ${missing.join(", ")}`), { status: 404 });
  // An evaluation that could not be read is named, not shown as a missing value.
  const evaluations = await inPool(jobs, (j) => (j.status === "succeeded"
    ? api(`/jobs/${j.id}/evaluation`).catch((err) => (err.status === 404 ? null : { error: err.message }))
    : null));
  const unreadable = jobs.map((j, i) => [j, evaluations[i]]).filter(([, e]) => e?.error);
  const history = await api(`/metrics?${jobs.map((j) => `job_id=${encodeURIComponent(j.id)}`).join("&")}&max_points=500`);
  const historyOf = new Map(history.jobs.map((j) => [j.job_id, j]));
  const names = [...new Set(history.jobs.flatMap((j) => j.series.map((s) => `${s.split}.${s.name}`)))].sort();
  const label = (j) => (j.sweep_id ? `${j.name || ""} ${jobLabel(j)}`.trim() : j.name || j.id.slice(0, 8));
  const chosen = names.includes("val.loss") ? "val.loss" : names[0];
  const select = h("select", { id: "compare-series", "aria-label": "series", onchange: (e) => draw(e.target.value) }, names.map((n) => h("option", { value: n, selected: n === chosen }, n)));
  const chartHolder = chartBox("chart-compare", 360);
  const draw = (name) => {
    disposeCharts();
    const series = jobs.map((job) => {
      const s = historyOf.get(job.id)?.series.find((x) => `${x.split}.${x.name}` === name) || { epochs: [], values: [] };
      return { name: label(job), epochs: s.epochs, values: s.values };
    });
    mountChart(chartHolder, Charts.curves({ series, yName: name }));
  };
  // Test metrics side by side, with the interval under each value.
  const metricNames = [...new Set(evaluations.flatMap((e) => Object.keys(e?.metrics?.test || {})))];
  const metricsTable = tableWrap(h("table", { id: "compare-metrics" },
    h("thead", {}, h("tr", {}, h("th", {}, "test metric"), jobs.map((j) => h("th", {}, h("a", { href: `#/jobs/${j.id}` }, label(j)))))),
    h("tbody", {}, metricNames.map((m) => h("tr", {}, h("td", {}, m), evaluations.map((e) => {
      const v = e?.metrics?.test?.[m];
      const ci = e?.intervals?.test?.[m];
      return h("td", { class: "num" }, fmt(v), ci ? h("small", {}, ` [${fmt(ci[0], 3)}, ${fmt(ci[1], 3)}]`) : "");
    }))))));
  const flat = jobs.map((j) => flatten(j.spec));
  const paths = [...new Set(flat.flatMap((f) => Object.keys(f)))].sort();
  const onlyDiff = h("input", { type: "checkbox", id: "only-differences",
    onchange: (e) => specTable.querySelectorAll("tbody tr:not(.differs)").forEach((r) => { r.hidden = e.target.checked; }) });
  const specTable = h("table", { id: "spec-diff" },
    h("thead", {}, h("tr", {}, h("th", {}, "spec field"), jobs.map((j) => h("th", {}, label(j))))),
    h("tbody", {}, paths.map((p) => {
      const values = flat.map((f) => JSON.stringify(f[p] ?? null));
      return h("tr", { class: new Set(values).size > 1 ? "differs" : "" }, h("td", {}, p), values.map((v) => h("td", {}, v)));
    })));
  view.replaceChildren(
    section(`Compare ${jobs.length} jobs`, h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), " / compare"),
      all.length > unique.length ? h("p", { id: "compare-limit", class: "error inline" },
        `Compared the first ${COMPARE_LIMIT} of the ${all.length} jobs in this link: the API compares at most ${COMPARE_LIMIT} at once.`) : null,
      missing.length ? h("p", { id: "compare-missing", class: "error inline" },
        `Left out, no longer found (deleted?): ${missing.join(", ")}`) : null,
      h("label", {}, "series ", select), chartHolder),
    section("Test metrics (95% CI)",
      unreadable.length ? h("p", { id: "compare-unreadable", class: "error inline" },
        `Could not load the evaluation of ${unreadable.map(([j, e]) => `${label(j)} (${e.error})`).join(", ")}; reload to try again.`) : null,
      metricNames.length ? metricsTable : empty("None of these jobs has an evaluation yet.")),
    section("Spec differences", h("label", {}, onlyDiff, " only fields that differ"), tableWrap(specTable)));
  if (chosen) draw(chosen); else chartHolder.replaceChildren(empty("No epochs recorded for these jobs yet."));
}

// ---------------------------------------------------------------- sweep page
function settingValue(v) { return typeof v === "number" ? fmt(v) : Array.isArray(v) ? `[${v.map(settingValue).join(", ")}]` : String(v); }
function settingLabel(setting) {
  const parts = Object.entries(setting || {}).map(([k, v]) => `${k.split(".").pop()}=${settingValue(v)}`);
  return parts.join(" ") || "base";
}

async function sweepView(view, id) {
  const first = await api(`/sweeps/${encodeURIComponent(id)}`);
  // Built once; while the sweep runs, a refresh every 5 s updates these parts where they are (the
  // charts by setOption on the same instances): the scroll position stays, a focused link in the
  // table keeps the focus, and nothing changes while the pointer is on a chart (its tooltip stays;
  // the update lands when the pointer leaves).
  const head = h("section", { id: "sweep-head" });
  const tableHolder = h("div");
  const confirmationSlot = h("div", { class: "slot" });
  const parameterList = h("ul", { id: "sweep-parameters" });
  const boxes = { sweep: chartBox("chart-sweep", 340), parallel: chartBox("chart-parallel", 320), effect: chartBox("chart-effect", 320) };
  view.replaceChildren(
    head,
    section("Settings", boxes.sweep, tableHolder),
    confirmationSlot,
    section("What moves the metric", h("div", { class: "chart-row" },
      h("div", {}, h("h3", {}, "Parallel coordinates (one line per job)"), boxes.parallel),
      h("div", {}, h("h3", {}, "Parameter effect"), boxes.effect, parameterList))),
  );
  const charts = {};
  let hovering = false;
  let pending = null;
  const draw = (key, option, none) => {
    const el = boxes[key];
    if (!option) {
      if (charts[key]) { unmountChart(charts[key]); charts[key] = null; }
      el.replaceChildren(empty(none));
      return;
    }
    if (charts[key]) { charts[key].setOption(option, { notMerge: true }); return; }
    el.replaceChildren();
    charts[key] = mountChart(el, option);
  };
  for (const el of Object.values(boxes)) {
    el.addEventListener("mouseenter", () => { hovering = true; });
    el.addEventListener("mouseleave", () => { hovering = false; if (pending) { const next = pending; pending = null; render(next); } });
  }
  let timer = null;
  const refresh = async () => {
    const next = await api(`/sweeps/${encodeURIComponent(id)}`);
    view.check();
    if (hovering) pending = next; else render(next);
    if (next.report.complete) clearInterval(timer);
  };
  const render = (sweep) => {
    state.sweepNames[sweep.id] = sweep;
    const focus = focusKey($("#view"));
    renderSweep(sweep, { head, tableHolder, confirmationSlot, parameterList, draw, refresh });
    restoreFocus($("#view"), focus);
  };
  render(first);
  if (!first.report.complete) {
    let busy = false;
    timer = setInterval(async () => {
      if (busy) return;
      busy = true;
      try { await refresh(); } catch (err) {
        if (err instanceof StaleRoute) clearInterval(timer);
        else say(`could not refresh the sweep: ${err.message}`);
      } finally { busy = false; }
    }, 5000);
    state.timer = timer;
  }
}

function renderSweep(sweep, { head, tableHolder, confirmationSlot, parameterList, draw, refresh }) {
  const report = sweep.report;
  const m = report.main_metric;
  const settings = report.settings;
  const labels = settings.map((s) => settingLabel(s.setting));
  const indexOf = new Map(settings.map((s, i) => [s.setting_key, i]));
  // The seed points are on the split the settings are ranked on: test for grids, the validation
  // objective for a tpe search (its test values are in the confirmation below, never used to choose).
  const ranked = (j) => (report.split === "val" ? j.objective_value : j.main_metric);
  const seeds = sweep.jobs.filter((j) => j.status === "succeeded" && ranked(j) != null && indexOf.has(j.setting_key))
    .map((j) => ({ setting: indexOf.get(j.setting_key), value: ranked(j), seed: j.seed }));
  const best = report.best;
  // A search has two "best" settings: this one, by the mean of all its runs (its trial and its
  // confirmation runs), and the one the search selected by its best trial (the confirmation table).
  const bestName = report.search ? "best mean over all its runs (trial and confirmation runs)" : "best";
  const bestText = best
    ? [h("p", { id: "sweep-best" }, best.explanation),
      h("p", { class: "hint", id: "sweep-best-setting" }, `${bestName}: ${settingLabel(best.best.setting)} (mean ${fmt(best.best.mean)}, n=${best.best.n})`,
        best.runner_up ? ` · runner-up: ${settingLabel(best.runner_up.setting)} (mean ${fmt(best.runner_up.mean)}, n=${best.runner_up.n})` : " · no runner-up",
        best.distinguishable === null ? "" : best.distinguishable ? " · their 95% intervals do not overlap" : " · their 95% intervals overlap: not distinguishable")]
    : [h("p", { id: "sweep-best" }, "No finished jobs yet.")];
  const jobsOf = (key) => sweep.jobs.filter((j) => j.setting_key === key);
  // "#" numbers the settings as the settings chart does when their names are too long for its axis.
  const table = tableWrap(h("table", { id: "sweep-settings" },
    h("thead", {}, h("tr", {}, ["#", "rank", "setting", "n", `mean ± std (${report.split} ${m})`, "95% CI", "seed CV", "jobs"].map((t) => h("th", {}, t)))),
    h("tbody", {}, settings.map((s, i) => {
      const stat = s.metrics[m];
      return h("tr", { "data-id": s.setting_key }, h("td", { class: "num" }, i + 1), h("td", {}, s.rank ?? "–"),
        h("td", {}, Object.entries(s.setting).map(([k, v]) => `${k}=${settingValue(v)}`).join(", ") || "base"),
        h("td", {}, `${s.n}/${s.jobs}`),
        h("td", { class: "num" }, stat ? `${fmt(stat.mean)} ± ${fmt(stat.std)}` : "–"),
        h("td", { class: "num" }, stat?.ci ? `[${fmt(stat.ci[0])}, ${fmt(stat.ci[1])}]` : "–"),
        h("td", { class: s.high_seed_variance ? "loses num" : "num" }, s.seed_cv === null ? "–" : fmt(s.seed_cv, 3)),
        h("td", { class: "job-links" }, jobsOf(s.setting_key).map((j) => h("a", { href: `#/jobs/${j.id}`, title: j.status, class: j.status === "succeeded" ? "" : `job-${j.status}` },
          `seed ${j.seed}`, j.status === "succeeded" ? "" : ` (${j.status})`))));
    }))));
  // The comparison takes at most 50 jobs (the API's limit): the best-ranked settings' jobs first.
  const byRank = [...sweep.jobs].sort((a, b) => (indexOf.get(a.setting_key) ?? 1e9) - (indexOf.get(b.setting_key) ?? 1e9));
  const compareAll = h("a", { id: "sweep-compare", href: `#/compare?jobs=${byRank.slice(0, COMPARE_LIMIT).map((j) => j.id).join(",")}` },
    sweep.jobs.length > COMPARE_LIMIT ? `compare the first ${COMPARE_LIMIT} of its jobs` : "compare all its jobs");
  head.replaceChildren(
    h("p", { class: "crumbs" }, h("a", { href: "#/sweeps" }, "Sweeps"), " / ", sweep.id),
    h("h2", { id: "sweep-title" }, `Sweep ${sweep.name || sweep.id}`, " ", report.complete
      ? h("button", { type: "button", id: "delete-sweep", onclick: async () => {
        if (!window.confirm(`Delete sweep ${sweep.name || sweep.id} and its ${sweep.jobs.length} jobs?`)) return;
        try { await api(`/sweeps/${sweep.id}`, { method: "DELETE" }); navigate("#/sweeps"); } catch (err) { say(err.message); }
      } }, "Delete")
      : h("button", { type: "button", id: "cancel-sweep", onclick: async () => {
        try { await api(`/sweeps/${sweep.id}/cancel`, { method: "POST" }); await refresh(); } catch (err) { if (!(err instanceof StaleRoute)) say(err.message); }
      } }, "Cancel its queued and running jobs")),
    h("p", { id: "sweep-progress" }, `${report.succeeded} of ${report.total} jobs succeeded`,
      report.pruned ? `, ${report.pruned} pruned` : "",
      report.complete ? "" : " (still running: the statistics can change)", ` · ${sweep.search} search · ${report.split} ${m}, ${report.lower_is_better ? "lower" : "higher"} is better · `, compareAll),
    ...bestText);
  tableHolder.replaceChildren(table);
  confirmationSlot.replaceChildren(...(report.search ? [confirmationSection(report)] : []));
  parameterList.replaceChildren(...Object.entries(report.parameters).map(([path, p]) =>
    h("li", {}, `${path}: range ${fmt(p.range)}, share of variance ${p.share_of_variance === null ? "–" : `${fmt(100 * p.share_of_variance, 3)}%`}` +
      (p.importance == null ? "" : `, importance (${report.importance_method}) ${fmt(100 * p.importance, 3)}%`))));
  draw("sweep", settings.some((s) => s.metrics[m])
    ? Charts.sweepSettings({ labels, metric: m, seeds, split: report.split,
      means: settings.map((s) => s.metrics[m]?.mean ?? null), intervals: settings.map((s) => s.metrics[m]?.ci ?? null) })
    : null, "No succeeded jobs yet: the statistics appear as seeds finish.");
  // A grid names its parameters; a search's trials carry theirs in their settings.
  const params = Object.keys(sweep.grid || {}).length ? Object.keys(sweep.grid)
    : [...new Set(sweep.jobs.flatMap((j) => Object.keys(j.setting || {})))].sort();
  const rows = sweep.jobs.filter((j) => j.status === "succeeded" && ranked(j) != null && params.every((p) => p in (j.setting || {})))
    .map((j) => [...params.map((p) => j.setting[p]), ranked(j)]);
  draw("parallel", params.length && rows.length ? Charts.parallel({ parameters: params, rows, metric: m, lowerIsBetter: report.lower_is_better, split: report.split }) : null,
    params.length ? "No succeeded jobs yet." : "This sweep varies only the seed.");
  draw("effect", Object.keys(report.parameters).length ? Charts.parameterEffect({ parameters: report.parameters, metric: m, split: report.split }) : null,
    "No parameter effect yet.");
}

// A tpe search chooses on validation metrics; the best and the runner-up are then re-run over the
// confirmation seeds, and their test metric is reported here (never used to choose).
function confirmationSection(report) {
  const search = report.search;
  const conf = search.confirmation;
  const testName = report.main_metric;
  const summary = (stat) => (stat ? `${fmt(stat.mean)} ± ${fmt(stat.std)}${stat.ci ? ` [${fmt(stat.ci[0])}, ${fmt(stat.ci[1])}]` : ""} (n=${stat.n})` : "–");
  // The search selects by each setting's best trial and then confirms on fresh seeds; the "best mean
  // over all its runs" above ranks by the mean of every run, so the two can name different settings.
  const rows = conf ? [["selected by the search (its best trial), confirmed on fresh seeds", conf.best],
    ["runner-up of the search, confirmed on fresh seeds", conf.runner_up]].filter(([, c]) => c) : [];
  return section("Search and confirmation",
    h("p", { id: "search-state" }, `${search.trials} of ${search.trial_budget} trials asked · ${search.pruned} pruned`,
      search.pruner ? ` by ${search.pruner}` : "", ` · objective ${search.objective} (${search.direction})`,
      search.done ? " · done" : " · still searching"),
    h("p", { class: "hint" }, search.selection),
    rows.length
      ? tableWrap(h("table", { id: "sweep-confirmation" },
        h("thead", {}, h("tr", {}, ["", "setting", "selecting trial", "confirmation seeds", `${search.objective} (mean ± std [95% CI])`, `test ${testName}`].map((t) => h("th", {}, t)))),
        h("tbody", {}, rows.map(([role, c]) => h("tr", {}, h("td", {}, role), h("td", {}, settingLabel(c.setting)),
          h("td", { class: "num", title: "the trial that won the selection: optimistic by being chosen, so left out of the confirmation" }, c.trial_objective == null ? "–" : fmt(c.trial_objective)),
          h("td", {}, c.seeds.join(", ") || "–"),
          h("td", { class: "num" }, summary(c.objective)), h("td", { class: "num" }, summary(c.test)))))))
      : empty(conf ? "The confirmation runs start when every trial has ended." : "This search has no confirmation seeds."));
}

// ---------------------------------------------------------------- cursor paging of the sweeps and datasets
// As in the jobs list: the page's cursor is in the address (links, reloads and Back keep it), the
// cursors of earlier pages are remembered, so Previous steps back (after a reload: to the first page).
function pageOf(list, params) {
  const limit = Math.min(500, Math.max(1, Number(params.get("limit") || 50) || 50));
  const cursor = params.get("cursor") || "";
  const pageNo = Math.max(1, Number(params.get("page") || 1) || 1);
  const key = `${list}:${limit}`;
  if (!listState.cursors.has(key)) listState.cursors.set(key, {});
  const known = listState.cursors.get(key);
  if (cursor) known[pageNo] = cursor;
  return { list, limit, cursor, pageNo, known, query: `limit=${limit}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}` };
}

function pagerOf({ list, limit, pageNo, known }, nextCursor) {
  if (pageNo === 1 && !nextCursor) return null;
  const go = (changes) => {
    const q = new URLSearchParams({ ...(limit !== 50 ? { limit: String(limit) } : {}), ...changes });
    navigate(`#/${list}${q.toString() ? `?${q}` : ""}`);
  };
  const previous = pageNo <= 2 ? {} : known[pageNo - 1] ? { cursor: known[pageNo - 1], page: String(pageNo - 1) } : null;
  return h("div", { class: "pager" },
    h("button", { type: "button", id: "previous-page", disabled: pageNo === 1, onclick: () => go(previous || {}) }, previous ? "‹ Previous" : "« First page"),
    h("span", { id: "page-number" }, `page ${pageNo}`),
    h("button", { type: "button", id: "next-page", disabled: !nextCursor, onclick: () => go({ cursor: nextCursor, page: String(pageNo + 1) }) }, "Next ›"));
}

// ---------------------------------------------------------------- sweeps index
async function sweepsView(view, params) {
  const paging = pageOf("sweeps", params);
  const page = await api(`/sweeps?${paging.query}`);
  await ensureDatasetNames(page.items.map((sw) => sw.dataset_id));
  for (const sw of page.items) state.sweepNames[sw.id] = sw;
  const table = page.items.length
    ? tableWrap(h("table", { id: "sweeps" },
      h("thead", {}, h("tr", {}, ["name", "search", "dataset", "finished", "succeeded", "failed / cancelled / pruned", "created"].map((t) => h("th", {}, t)))),
      h("tbody", {}, page.items.map((sw) => {
        const p = sw.progress;
        return h("tr", { "data-id": sw.id, onclick: () => navigate(`#/sweeps/${sw.id}`) },
          h("td", { class: "clip", title: sw.name || sw.id }, h("a", { href: `#/sweeps/${sw.id}` }, sw.name || sw.id.slice(0, 8))),
          h("td", {}, sw.search),
          h("td", { class: "clip", title: state.datasetNames[sw.dataset_id]?.name || sw.dataset_id }, state.datasetNames[sw.dataset_id]?.name || sw.dataset_id.slice(0, 8)),
          h("td", {}, progressBar({ progress: { epoch: p.finished, epochs: p.total } })),
          h("td", { class: "num" }, p.succeeded), h("td", { class: "num" }, `${p.failed} / ${p.cancelled} / ${p.pruned}`),
          whenCell(sw.created_at));
      }))))
    : empty(h("h3", {}, "No sweeps yet"), h("p", {}, "POST a base spec and a grid to ", h("code", {}, "/api/v1/sweeps"),
      " or run ", h("code", {}, "rnnlab sweeps submit"), " (see the ", docsLink(), ")."));
  view.replaceChildren(section("Sweeps", table, pagerOf(paging, page.next_cursor)));
}

// ---------------------------------------------------------------- datasets
async function datasetsView(view, params) {
  const paging = pageOf("datasets", params);
  const page = await api(`/datasets?${paging.query}`);
  for (const d of page.items) state.datasetNames[d.id] = d;
  const fileInput = h("input", { type: "file", name: "file", id: "upload-file", required: true, accept: ".csv,.gz,.parquet,.npz" });
  const nameInput = h("input", { type: "text", name: "name", id: "upload-name", placeholder: "name (optional)" });
  const uploadMessage = h("p", { id: "upload-message", class: "inline", role: "status" });
  const form = h("form", { id: "upload-form", class: "toolbar", onsubmit: async (e) => {
    e.preventDefault();
    uploadMessage.className = "inline";
    uploadMessage.textContent = "Uploading…";
    const body = new FormData();
    body.append("file", fileInput.files[0]);
    if (nameInput.value.trim()) body.append("name", nameInput.value.trim());
    try {
      const ds = await api("/datasets", { method: "POST", body });
      navigate(`#/datasets/${ds.id}`);
    } catch (err) { uploadMessage.className = "error inline"; uploadMessage.textContent = err.message; }
  } }, fileInput, nameInput, h("button", { type: "submit" }, "Upload"));
  const table = page.items.length
    ? tableWrap(h("table", { id: "datasets" },
      h("thead", {}, h("tr", {}, ["name", "format", "rows", "columns", "size", "created"].map((t) => h("th", {}, t)))),
      h("tbody", {}, page.items.map((d) => h("tr", { "data-id": d.id, onclick: () => navigate(`#/datasets/${d.id}`) },
        h("td", { class: "clip", title: d.name }, h("a", { href: `#/datasets/${d.id}` }, d.name)), h("td", {}, d.format),
        h("td", { class: "num" }, d.num_rows ?? "–"),
        // The list carries a column count (names are on the dataset's own page); NPZ files list their arrays.
        h("td", {}, d.arrays ? Object.keys(d.arrays).join(", ") : d.num_columns != null ? `${d.num_columns} columns` : (d.columns || []).map((c) => c.name).join(", ")),
        h("td", { class: "num" }, `${fmt(d.size_bytes / 1024, 3)} KiB`), whenCell(d.created_at))))))
    : empty(h("h3", {}, "No datasets yet"), h("p", {}, "Upload a .csv, .csv.gz, .parquet or .npz file above (or POST it to ",
      h("code", {}, "/api/v1/datasets"), ", see the ", docsLink(), ")."));
  view.replaceChildren(section("Upload a dataset", form, uploadMessage), section("Datasets", table, pagerOf(paging, page.next_cursor)));
}

// The preview's cells as the API sent them: a number keeps its JSON text (1700000000123 or 0.1, never
// 1.7e+12 or a rounded float), where the browser gives JSON.parse the source text of each value.
class ExactNumber { constructor(text) { this.text = text; } }
function exactPreview(text) {
  const preview = JSON.parse(text);
  if (preview.rows) {
    preview.rows = JSON.parse(text, (key, value, context) =>
      (typeof value === "number" ? new ExactNumber(context?.source ?? String(value)) : value)).rows;
  }
  return preview;
}
// A preview cell as text: numbers as sent, lists as [a, b], structs and maps as {"k": v} (a list
// cell showed "[object Object]…", a struct always had).
function cellText(value, nested = false) {
  if (value instanceof ExactNumber) return value.text;
  if (value === null || value === undefined) return nested ? "null" : "–";
  if (Array.isArray(value)) return `[${value.map((v) => cellText(v, true)).join(", ")}]`;
  if (typeof value === "object") return `{${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${cellText(v, true)}`).join(", ")}}`;
  return nested && typeof value === "string" ? JSON.stringify(value) : String(value);
}

async function datasetView(view, id) {
  const ds = await api(`/datasets/${encodeURIComponent(id)}`);
  state.datasetNames[ds.id] = ds;
  const [preview, jobs, schema] = await Promise.all([
    api(`/datasets/${ds.id}/preview?rows=20`, { raw: true }).then(async (r) => exactPreview(await r.text())),
    api(`/jobs?dataset_id=${ds.id}&limit=50`),
    fetch("/openapi.json").then((r) => r.json()),
  ]);
  // The leaderboard opens on the main metric of the task most of these jobs have.
  const tasks = {};
  for (const j of jobs.items) tasks[taskOf(j)] = (tasks[taskOf(j)] || 0) + 1;
  const task = Object.entries(tasks).sort((a, b) => b[1] - a[1])[0]?.[0];
  const metric = `test.${mainMetric(task)}`;
  const columns = ds.columns
    ? tableWrap(h("table", { id: "dataset-columns" }, h("thead", {}, h("tr", {}, ["column", "type", "missing"].map((t) => h("th", {}, t)))),
      h("tbody", {}, ds.columns.map((c) => h("tr", {}, h("td", {}, c.name), h("td", {}, c.dtype), h("td", { class: "num" }, c.missing))))))
    : tableWrap(h("table", { id: "dataset-columns" }, h("thead", {}, h("tr", {}, h("th", {}, "array"), h("th", {}, "shape"))),
      h("tbody", {}, Object.entries(ds.arrays || {}).map(([n, shape]) => h("tr", {}, h("td", {}, n), h("td", {}, `[${shape.join(", ")}]`))))));
  let previewTable;
  if (preview.rows?.length) {
    const keys = Object.keys(preview.rows[0]);
    previewTable = tableWrap(h("table", { id: "dataset-preview" }, h("thead", {}, h("tr", {}, keys.map((k) => h("th", {}, k)))),
      h("tbody", {}, preview.rows.map((r) => h("tr", {}, keys.map((k) => h("td", r[k] instanceof ExactNumber ? { class: "num" } : {},
        cellText(r[k]))))))));
  } else if (preview.arrays) {
    previewTable = h("pre", { id: "dataset-preview" }, JSON.stringify(preview.arrays, null, 1).slice(0, 4000));
  } else previewTable = empty("Nothing to preview.");
  const jobsTableEl = jobs.items.length
    // Each job's own main metric, named in its cell: a regression's rmse is not an accuracy.
    ? [tableWrap(h("table", { id: "dataset-jobs" }, h("thead", {}, h("tr", {}, ["job", "status", "task", "cell", "progress", "test metric"].map((t) => h("th", {}, t)))),
      h("tbody", {}, jobs.items.map((j) => h("tr", {}, h("td", { class: "clip" }, h("a", { href: `#/jobs/${j.id}` }, j.sweep_id ? `${j.name || ""} ${jobLabel(j)}` : j.name || j.id.slice(0, 8))),
        h("td", {}, statusPill(j.status)), h("td", {}, taskOf(j)), h("td", {}, j.spec.model.cell), h("td", {}, progressBar(j)),
        h("td", { class: "num" }, j.summary?.test ? `${mainMetric(taskOf(j))} ${fmt(j.summary.test[mainMetric(taskOf(j))])}` : "–")))))),
      h("p", { class: "hint" }, jobs.next_cursor ? `The 50 newest jobs; ` : "", h("a", { id: "dataset-all-jobs", href: `#/jobs?dataset=${ds.id}` }, "these jobs in the jobs list"),
        " (filter, sort and compare them there).")]
    : empty("No job uses this dataset yet: start one with the form below.");
  const boardHolder = h("div", { id: "leaderboard" });
  const metricSelect = h("select", { "aria-label": "leaderboard metric", onchange: (e) => loadBoard(e.target.value) },
    ["test.rmse", "test.mae", "test.smape", "test.r2", "test.accuracy", "test.macro_f1", "test.log_loss"].map((m) => h("option", { value: m, selected: m === metric }, m)));
  const loadBoard = async (name) => {
    try {
      const board = await api(`/datasets/${ds.id}/leaderboard?metric=${encodeURIComponent(name)}&limit=10`);
      boardHolder.replaceChildren(board.items.length
        ? tableWrap(h("table", {}, h("thead", {}, h("tr", {}, ["rank", "job", "cell", name, "95% CI"].map((t) => h("th", {}, t)))),
          h("tbody", {}, board.items.map((e) => h("tr", {}, h("td", {}, e.rank), h("td", { class: "clip" }, h("a", { href: `#/jobs/${e.job_id}` },
            `${e.name || e.job_id.slice(0, 8)}${e.setting ? ` · ${settingLabel(e.setting)}` : ""}${e.sweep_id && e.seed != null ? ` · seed ${e.seed}` : ""}`)),
            h("td", {}, e.cell), h("td", { class: "num" }, fmt(e.value)), h("td", { class: "num" }, e.interval ? `[${fmt(e.interval[0])}, ${fmt(e.interval[1])}]` : "–"))))))
        : empty(`No succeeded job has ${name} yet.`));
    } catch (err) { boardHolder.replaceChildren(h("p", { class: "error inline" }, err.message)); }
  };
  view.replaceChildren(
    section(null, h("p", { class: "crumbs" }, h("a", { href: "#/datasets" }, "Datasets"), " / ", ds.id),
      h("h2", { id: "dataset-title" }, ds.name),
      h("p", {}, `${ds.format} · ${ds.num_rows ?? "–"} rows · ${fmt(ds.size_bytes / 1024, 3)} KiB · sha256 ${ds.sha256.slice(0, 12)}… · uploaded ${when(ds.created_at)}`)),
    section("Leaderboard", h("label", {}, "metric ", metricSelect), boardHolder),
    section("Columns", columns),
    section("Preview (first 20 rows)", previewTable),
    section("Jobs on this dataset", jobsTableEl),
    section("New job", newJobForm(ds, schema)));
  loadBoard(metric);
}

// ---------------------------------------------------------------- new-job form from the JobSpec schema
function resolveRef(schema, node) {
  let n = node;
  while (n && n.$ref) n = schema.components.schemas[n.$ref.split("/").pop()];
  if (n && n.allOf && n.allOf.length === 1) return { ...resolveRef(schema, n.allOf[0]), ...n, allOf: undefined };
  return n;
}

// One input per leaf field of the spec, prefilled with the schema's default.
function specFields(schema, node, prefix = "") {
  const fields = [];
  const props = resolveRef(schema, node)?.properties || {};
  for (const [name, raw] of Object.entries(props)) {
    const path = prefix ? `${prefix}.${name}` : name;
    const prop = resolveRef(schema, raw);
    if (prop.properties) { fields.push({ group: path }, ...specFields(schema, prop, path)); continue; }
    // An optional section (e.g. text: TextSpec | null): its fields, sent only when its required ones are filled.
    const section = (prop.anyOf || []).map((v) => resolveRef(schema, v)).find((v) => v?.properties);
    if (section) {
      fields.push({ group: path, optional: true, needs: section.required || [] }, ...specFields(schema, section, path));
      continue;
    }
    const variants = (prop.anyOf || [prop]).map((v) => resolveRef(schema, v));
    const enums = variants.flatMap((v) => v.enum || (v.const !== undefined ? [v.const] : []));
    const types = variants.map((v) => v.type).filter(Boolean);
    // A value of its own besides the listed ones (e.g. epochs: an integer or "auto"): a text box, not a select.
    const free = variants.some((v) => v.enum === undefined && v.const === undefined && v.type && v.type !== "null");
    fields.push({ path, name, default: raw.default ?? prop.default, description: raw.description || prop.description || "",
      enums, types, free, nullable: types.includes("null"), required: false });
  }
  return fields;
}

function parseField(field, text) {
  if (text === "") return field.nullable ? null : undefined;
  if (field.types.includes("array")) return text.split(",").map((s) => s.trim()).filter(Boolean);
  if ((field.types.includes("integer") || field.types.includes("number")) && /^-?\d+(\.\d+)?([eE][-+]?\d+)?$/.test(text)) return Number(text);
  if (text === "true" || text === "false") return field.types.includes("boolean") ? text === "true" : text;
  return text;
}

function newJobForm(ds, openapi) {
  const spec = openapi.components?.schemas?.JobSpec;
  if (!spec) return empty("This server's /openapi.json has no JobSpec schema.");
  const required = new Set([...(spec.required || []).map((r) => r), "data.target", "data.layout"]);
  const all = specFields(openapi, spec).filter((f) => f.path !== "dataset_id");
  // Top-level fields (name, task, device) first, then one group per nested part of the spec.
  const fields = [...all.filter((f) => !f.group && !f.path.includes(".")), ...all.filter((f) => f.group || f.path.includes("."))];
  const columnList = h("datalist", { id: "column-names" }, (ds.columns || []).map((c) => h("option", { value: c.name })));
  const controls = [];
  const body = [];
  for (const f of fields) {
    if (f.group) { body.push(h("h4", {}, f.group, f.optional ? ` (optional: fill ${f.needs.join(", ")} to use it)` : "")); continue; }
    const id = `spec-${f.path.replace(/\./g, "-")}`;
    let input;
    if (f.types.includes("boolean") && !f.enums.length) {
      input = h("input", { type: "checkbox", id, checked: f.default === true });
    } else if (f.enums.length && !f.free) {
      const options = [...(f.nullable || f.default === undefined ? [""] : []), ...f.enums.filter((e) => e !== null)];
      input = h("select", { id }, options.map((o) => h("option", { value: String(o), selected: String(o) === String(f.default ?? "") }, o === "" ? "(default)" : String(o))));
    } else {
      const value = f.default === undefined || f.default === null ? "" : Array.isArray(f.default) ? f.default.join(",") : String(f.default);
      const suggestions = f.enums.length ? `${id}-choices` : /target|column|features/.test(f.path) ? "column-names" : null;
      input = h("input", { id, type: "text", value, size: 14, placeholder: f.enums.filter((e) => e !== null).join(" | ") || (f.nullable ? "null" : ""), list: suggestions });
      if (f.enums.length) body.push(h("datalist", { id: suggestions }, f.enums.filter((e) => e !== null).map((e) => h("option", { value: String(e) }))));
    }
    controls.push({ field: f, input });
    body.push(h("label", { class: "field", title: f.description }, h("span", {}, f.path, required.has(f.path) ? " *" : ""), input));
  }
  const result = h("p", { id: "new-job-message", class: "inline", role: "status" });
  const form = h("form", { id: "new-job-form", onsubmit: async (e) => {
    e.preventDefault();
    const out = { dataset_id: ds.id };
    for (const { field, input } of controls) {
      const value = input.type === "checkbox" ? input.checked : parseField(field, input.value.trim());
      if (value === undefined) continue;
      const keys = field.path.split(".");
      let node = out;
      for (const k of keys.slice(0, -1)) node = node[k] ??= {};
      node[keys.at(-1)] = value;
    }
    // An optional section left without its required fields is not sent at all.
    for (const g of fields.filter((f) => f.group && f.optional)) {
      const keys = g.group.split(".");
      const parent = keys.slice(0, -1).reduce((n, k) => n?.[k], out);
      const node = parent?.[keys.at(-1)];
      if (node && g.needs.some((k) => node[k] === undefined || node[k] === null)) delete parent[keys.at(-1)];
    }
    result.className = "inline";
    result.textContent = "Submitting…";
    try {
      const job = await api("/jobs", { method: "POST", body: JSON.stringify(out) });
      navigate(`#/jobs/${job.id}`);
    } catch (err) { result.className = "error inline"; result.textContent = err.message; }
  } }, columnList, h("p", { class: "hint" }, "Prefilled with the defaults of the JobSpec schema in ", h("a", { href: "/openapi.json", target: "_blank" }, "/openapi.json"),
    "; * is required. Field help on hover; the whole spec is described in the ", docsLink(), "."),
  h("div", { class: "fields" }, body), h("button", { type: "submit" }, "Start job"), result);
  return form;
}

// ---------------------------------------------------------------- start
$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.key = $("#api-key").value.trim();
  if (state.key) sessionStorage.setItem(KEY_STORAGE, state.key); else sessionStorage.removeItem(KEY_STORAGE);
  route();
});
$("#api-key").value = state.key;
window.addEventListener("hashchange", () => route());
darkQuery.addEventListener("change", () => route());  // charts pick their theme at creation
route();

// rnnlab dashboard: plain JS over the REST API (the key stays in this browser's localStorage).
const $ = (sel) => document.querySelector(sel);
const state = { key: localStorage.getItem("rnnlab.key") || "", selected: null, timer: null };
const COLORS = ["#2f6fde", "#e0662d", "#2a9d5b", "#9b4dca", "#c9a227", "#d3365d"];

async function api(path, options = {}) {
  const response = await fetch(`/api/v1${path}`, {
    ...options,
    headers: { Authorization: `Bearer ${state.key}`, "Content-Type": "application/json", ...(options.headers || {}) },
  });
  const body = response.headers.get("content-type")?.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error(body?.error?.message || `HTTP ${response.status}`);
  return body;
}

// Everything a user or a dataset can name (job names, columns, error messages) goes through esc().
function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function say(text) { $("#message").textContent = text || ""; }
function fmt(x) { return x === null || x === undefined ? "–" : (Math.abs(x) >= 100 ? x.toFixed(1) : x.toPrecision(4)); }
function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text) node.textContent = text;
  return node;
}

async function loadJobs() {
  if (!state.key) { say("Enter an API key to see your jobs."); return; }
  const status = $("#status-filter").value;
  try {
    const page = await api(`/jobs?limit=100${status ? `&status=${status}` : ""}`);
    const tbody = $("#jobs tbody");
    tbody.replaceChildren();
    for (const job of page.items) {
      const row = el("tr", { "data-id": job.id });
      if (job.id === state.selected) row.classList.add("selected");
      const main = job.task === "classification" ? "accuracy" : "rmse";
      const test = job.summary?.test?.[main];
      // Sweep jobs share a name: say which setting and seed each one is.
      const setting = job.setting ? Object.entries(job.setting).map(([k, v]) => `${k.split(".").pop()}=${v}`).join(" ") : "";
      const label = (job.name || job.id.slice(0, 8)) + (job.sweep_id ? ` · ${setting} seed ${job.spec.training.seed}` : "");
      row.append(
        el("td", {}, label),
        Object.assign(el("td"), { innerHTML: `<span class="status ${esc(job.status)}">${esc(job.status)}</span>` }),
        el("td", {}, job.spec.model.cell),
        el("td", {}, `${job.progress.epoch}/${job.progress.epochs}`),
        el("td", {}, test === undefined ? "–" : `${main} ${fmt(test)}`),
        el("td", {}, new Date(job.created_at).toLocaleString()),
      );
      row.addEventListener("click", () => selectJob(job.id));
      tbody.append(row);
    }
    const sweeps = await api("/sweeps?limit=50").catch(() => ({ items: [] }));
    $("#sweeps").replaceChildren(...sweeps.items.map((s) => {
      const item = el("li", { "data-id": s.id }, `${s.name || s.id} — ${s.progress.finished}/${s.progress.total} finished`);
      item.addEventListener("click", () => selectSweep(s.id));
      return item;
    }));
    say(page.items.length ? "" : "No jobs yet: POST /api/v1/jobs to start one.");
  } catch (err) { say(err.message); }
}

function drawCurves(series) {
  const svg = $("#curves");
  svg.replaceChildren();
  const lines = series.filter((s) => s.name === "loss");
  const all = lines.flatMap((s) => s.values.filter((v) => v !== null));
  svg.style.display = all.length ? "" : "none";
  if (!all.length) { $("#legend").textContent = "No epochs recorded yet."; return; }
  const maxEpoch = Math.max(...lines.flatMap((s) => s.epochs));
  const lo = Math.min(...all), hi = Math.max(...all);
  // Losses that fall by orders of magnitude read better on a log scale.
  const logScale = lo > 0 && hi / lo > 20;
  const t = logScale ? Math.log10 : (v) => v;
  const x = (e) => 40 + (e - 1) / Math.max(maxEpoch - 1, 1) * 540;
  const y = (v) => 220 - (t(v) - t(lo)) / (t(hi) - t(lo) || 1) * 200;
  const legend = [];
  lines.forEach((s, i) => {
    const points = s.epochs.map((e, j) => `${x(e)},${y(s.values[j])}`).join(" ");
    svg.append(Object.assign(document.createElementNS("http://www.w3.org/2000/svg", "polyline"), {}));
    const line = svg.lastChild;
    line.setAttribute("points", points);
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", COLORS[i % COLORS.length]);
    line.setAttribute("stroke-width", "2");
    legend.push(`<span style="color:${COLORS[i % COLORS.length]}">■ ${esc(s.split)} ${esc(s.name)}</span>`);
  });
  legend.push(`<span>min ${fmt(lo)} · max ${fmt(hi)} · ${maxEpoch} epochs${logScale ? " · log scale" : ""}</span>`);
  $("#legend").innerHTML = legend.join("");
}

function renderEvaluation(ev, status) {
  const box = $("#evaluation");
  if (!ev) {
    box.textContent = ["queued", "running"].includes(status) ? "Available when the job has succeeded." : `None: the job ${status}.`;
    $("#attribution").textContent = "–";
    return;
  }
  const main = ev.main_metric;
  const rows = Object.entries(ev.metrics.test || {}).map(([name, v]) => {
    const ci = ev.intervals?.test?.[name];
    return `<tr><td>${esc(name)}</td><td>${fmt(ev.metrics.train?.[name])}</td><td>${fmt(ev.metrics.val?.[name])}</td>` +
      `<td><b>${fmt(v)}</b></td><td>${ci ? `[${fmt(ci[0])}, ${fmt(ci[1])}]` : "–"}</td></tr>`;
  }).join("");
  const baselines = Object.entries(ev.comparison || {}).map(([name, c]) =>
    `<li class="${c.beats ? "beats" : "loses"}">${c.beats ? "beats" : "does not beat"} ${esc(name)}: ` +
    `${esc(main)} ${fmt(c.model)} vs ${fmt(c.baseline)}</li>`).join("");
  box.innerHTML = `<table><thead><tr><th>metric</th><th>train</th><th>val</th><th>test</th><th>95% CI</th></tr></thead>` +
    `<tbody>${rows}</tbody></table><ul>${baselines}</ul>`;
  const attr = ev.attribution;
  if (!attr || !attr.importance) { $("#attribution").textContent = "No attribution for this job."; return; }
  const peak = Math.max(...attr.importance.flat(), 1e-12);
  const heat = el("div", { class: "heat", style: `grid-template-columns: repeat(${attr.features.length}, 1fr)` });
  for (const row of attr.importance) {
    for (const v of row) heat.append(el("div", { style: `background: rgba(47,111,222,${(v / peak).toFixed(3)})`, title: fmt(v) }));
  }
  const shares = Object.entries(attr.feature_importance || {}).map(([f, v]) => `${f}: ${(100 * v).toFixed(1)}%`).join(" · ");
  $("#attribution").replaceChildren(el("p", {}, `time steps (rows, oldest first) × features (${attr.features.join(", ")}) — ${shares}`), heat);
}

async function selectSweep(id) {
  state.sweep = id;
  $("#sweep-detail").hidden = false;
  try {
    const sweep = await api(`/sweeps/${id}`);
    const report = sweep.report;
    const m = report.main_metric;
    $("#sweep-title").textContent = `Sweep ${sweep.name || sweep.id}`;
    $("#sweep-progress").textContent = `${report.succeeded} of ${report.total} jobs succeeded` +
      (report.pruned ? `, ${report.pruned} pruned` : "") +
      (report.complete ? "" : " (still running: statistics can change)") +
      ` · ${report.split}.${m}, ${report.lower_is_better ? "lower" : "higher"} is better`;
    $("#sweep-best").textContent = report.best ? report.best.explanation : "No finished jobs yet.";
    const rows = report.settings.map((s) => {
      const stat = s.metrics[m];
      const tr = el("tr");
      tr.append(
        el("td", {}, s.rank ?? "–"),
        el("td", {}, Object.entries(s.setting).map(([k, v]) => `${k}=${v}`).join(", ") || "base"),
        el("td", {}, `${s.n}/${s.jobs}`),
        el("td", {}, stat ? `${fmt(stat.mean)} ± ${fmt(stat.std)}` : "–"),
        el("td", {}, stat?.ci ? `[${fmt(stat.ci[0])}, ${fmt(stat.ci[1])}]` : "–"),
        el("td", { class: s.high_seed_variance ? "loses" : "" }, s.seed_cv === null ? "–" : fmt(s.seed_cv)),
      );
      return tr;
    });
    $("#sweep-settings tbody").replaceChildren(...rows);
    $("#sweep-parameters").replaceChildren(...Object.entries(report.parameters).map(([path, p]) =>
      el("li", {}, `${path}: range ${fmt(p.range)}, share of variance ${p.share_of_variance === null ? "–" : (100 * p.share_of_variance).toFixed(0) + "%"}` +
        `, importance (${report.importance_method}) ${p.importance == null ? "–" : (100 * p.importance).toFixed(0) + "%"}`)));
  } catch (err) { say(err.message); }
}

async function selectJob(id) {
  state.selected = id;
  document.querySelectorAll("#jobs tbody tr").forEach((r) => r.classList.toggle("selected", r.dataset.id === id));
  $("#detail").hidden = false;
  try {
    const job = await api(`/jobs/${id}`);
    $("#detail-title").textContent = job.name || job.id;
    $("#detail-status").innerHTML = `<span class="status ${esc(job.status)}">${esc(job.status)}</span> ` +
      `epoch ${job.progress.epoch}/${job.progress.epochs} · attempts ${job.attempts} · ` +
      `${esc(job.spec.model.cell)} h=${esc(job.spec.model.hidden_size)}` +
      (job.error ? ` · <b>${esc(job.error.type)}</b>: ${esc(job.error.message)}` : "");
    $("#cancel-job").hidden = !["queued", "running"].includes(job.status);
    drawCurves((await api(`/jobs/${id}/metrics`)).series);
    renderEvaluation(job.status === "succeeded" ? await api(`/jobs/${id}/evaluation`) : null, job.status);
  } catch (err) { say(err.message); }
}

$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.key = $("#api-key").value.trim();
  localStorage.setItem("rnnlab.key", state.key);
  loadJobs();
});
$("#refresh").addEventListener("click", loadJobs);
$("#status-filter").addEventListener("change", loadJobs);
$("#cancel-job").addEventListener("click", async () => {
  try { await api(`/jobs/${state.selected}/cancel`, { method: "POST" }); selectJob(state.selected); } catch (err) { say(err.message); }
});
$("#api-key").value = state.key;
loadJobs();
state.timer = setInterval(() => {
  loadJobs();
  if (state.selected) selectJob(state.selected);
  if (state.sweep) selectSweep(state.sweep);
}, 3000);

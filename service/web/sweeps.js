// The sweep pages of the dashboard: the list, and a sweep's page: its phase diagram as a heatmap
// (axes and colour chosen from menus, with its colour scale; a click on a cell lists its members
// and picks out their curves), the members' accuracy curves overlaid (sweepcharts.js), and the
// median steps to memorise and to generalise against an axis. Loaded before app.js, whose
// helpers (api, h, put, badge, progressBar, fmt, fail, showError, session) it uses when a route
// calls it.
"use strict";

async function sweepList(main, v) {
  const body = h("tbody");
  main.append(h("h1", {}, "Sweeps"), h("table", { id: "sweeps", class: "list" },
    h("thead", {}, h("tr", {}, ["Name", "Status", "Members", "Progress", "Created"].map((c) => h("th", {}, c)))),
    body));
  async function load() {
    const page = await api("/sweeps", { signal: v.signal });
    put(body, ...page.items.map((s) => h("tr", {},
      h("td", {}, h("a", { href: `#/sweeps/${s.id}` }, s.name)), h("td", {}, badge(s.status)),
      h("td", {}, s.n_members), h("td", {}, progressBar(Math.round(100 * s.progress), 100)),
      h("td", {}, when(s.created_at)))));
    if (page.items.length === 0) body.append(h("tr", {}, h("td", { colspan: 5, class: "empty" }, "no sweeps")));
  }
  await load();
  v.every(LIST_POLL_MS, () => load().catch(fail));
}

const CELL_METRICS = {
  grokked_fraction: "fraction that generalised",
  median_generalization_step: "median generalisation step",
  median_memorization_step: "median memorisation step",
  median_final_val_acc: "median final val accuracy",
  finished: "finished members",
};

async function sweepPage(main, id, v) {
  let sweep = await api(`/sweeps/${id}`, { signal: v.signal });
  const axes = Object.keys(sweep.grid);
  const select = (elId, options, value) => {
    const el = h("select", { id: elId }, options);
    if (value !== undefined) el.value = value;
    return el;
  };
  const axisOptions = () => axes.map((a) => h("option", { value: a }, a));
  const xSel = select("axis-x", axisOptions());
  const ySel = select("axis-y", [h("option", { value: "" }, "(none)"), axisOptions()], axes.length > 1 ? axes[1] : "");
  const mSel = select("cell-metric", Object.entries(CELL_METRICS).map(([k, l]) => h("option", { value: k }, l)));
  const colourSel = select("curves-axis", axisOptions(), axes[0]);
  const stepsSel = select("steps-axis", axisOptions(), axes.includes("task.train_fraction") ? "task.train_fraction" : axes[0]);
  const heatmap = h("div", { id: "heatmap" });
  const members = h("div", { id: "cell-members" });
  const header = h("section", { class: "card", id: "sweep-header" });
  const curveEls = { val_acc: h("div", { class: "chart", id: "chart-sweep-val" }),
                     train_acc: h("div", { class: "chart", id: "chart-sweep-train" }) };
  const curveLegend = h("div", { class: "legend", id: "curves-legend" });
  const stepsEl = h("div", { id: "steps-plot" });
  const stepsReadout = h("p", { class: "readout note", id: "steps-readout" }, "\u00a0");
  main.append(
    header,
    h("section", { class: "card" }, h("h2", {}, "Phase diagram"),
      h("div", { class: "filters" }, h("label", {}, "x ", xSel), h("label", {}, "y ", ySel), h("label", {}, "colour ", mSel)),
      heatmap, members),
    h("section", { class: "card", id: "sweep-curves" }, h("h2", {}, "Members' accuracy"),
      h("div", { class: "filters" }, h("label", {}, "colour by ", colourSel),
        h("span", { class: "note" }, "click a cell of the phase diagram to pick out its members")),
      curveLegend,
      h("div", { class: "sweep-charts" },
        h("figure", {}, h("figcaption", {}, "Validation accuracy"), curveEls.val_acc),
        h("figure", {}, h("figcaption", {}, "Train accuracy"), curveEls.train_acc))),
    h("section", { class: "card", id: "sweep-steps" }, h("h2", {}, "Steps to memorise and to generalise"),
      h("div", { class: "filters" }, h("label", {}, "against ", stepsSel)), stepsEl, stepsReadout));
  const state = { members: null, metrics: new Map(), selected: null, highlighted: null };

  // The sweep's state, with Pause (every unfinished member) and Resume (every paused one) for
  // a write token.
  function renderHeader() {
    const canWrite = session.who && session.who.scope !== "read";
    const counts = sweep.counts;
    const canPause = canWrite && (counts.queued > 0 || counts.running > 0);
    const canResume = canWrite && counts.paused > 0;
    put(header, h("h1", {}, sweep.name, " ", badge(sweep.status)),
      h("p", {}, `${sweep.n_members} members in ${sweep.n_packs} packs; `,
        Object.entries(counts).map(([k, n]) => `${k} ${n}`).join(", ")),
      progressBar(Math.round(100 * sweep.progress), 100),
      h("div", { class: "actions" },
        canPause ? h("button", { type: "button", id: "pause-sweep", onclick: () => act("pause") }, "Pause") : null,
        canResume ? h("button", { type: "button", id: "resume-sweep", onclick: () => act("resume") }, "Resume") : null));
  }

  async function act(action) {
    try {
      sweep = await api(`/sweeps/${id}/${action}`, { method: "POST" });
      renderHeader();
    } catch (err) {
      if (err.status === 403) showError(`this token may only read: ${action === "pause" ? "pausing" : "resuming"} needs a write token`);
      else fail(err);
    }
  }

  async function refreshHeader() {
    sweep = await api(`/sweeps/${id}`, { signal: v.signal });
    renderHeader();
  }

  // The members, and the accuracy curves of each one that has started (again while unfinished).
  async function loadMembers() {
    state.members = (await api(`/sweeps/${id}/members`, { signal: v.signal })).members;
    const todo = state.members.filter((m) => m.status !== "queued" &&
      (!state.metrics.has(m.experiment_id) || !SWEEP_FINISHED.includes(state.metrics.get(m.experiment_id).status)));
    const next = async () => {
      for (let m = todo.shift(); m; m = todo.shift()) {
        const metrics = await api(`/experiments/${m.experiment_id}/metrics?names=train_acc,val_acc&max_points=300`, { signal: v.signal });
        state.metrics.set(m.experiment_id, { ...metrics, status: m.status });
      }
    };
    await Promise.all(Array.from({ length: 6 }, next));
  }

  function drawCurves() {
    if (!state.members) return;
    SweepCharts.curves(curveEls, state.members, state.metrics, sweep.grid, colourSel.value, state.highlighted, curveLegend);
  }

  function drawSteps() {
    const rows = SweepCharts.stepsByValue(state.members, sweep.grid, stepsSel.value);
    SweepCharts.medians(stepsEl, rows, stepsSel.value, (r) => { stepsReadout.textContent = SweepCharts.describe(r, stepsSel.value); });
  }

  async function draw() {
    if (ySel.value === xSel.value) ySel.value = "";
    const q = new URLSearchParams({ x: xSel.value });
    if (ySel.value) q.set("y", ySel.value);
    const d = await api(`/sweeps/${id}/phase-diagram?${q}`, { signal: v.signal });
    const metric = mSel.value;
    const values = d.cells.map((c) => c[metric]).filter((x) => x !== null && x !== undefined);
    const lo = Math.min(...values), hi = Math.max(...values);
    const ys = d.y ? d.y.values : [null];
    const cellOf = (x, y) => d.cells.find((c) => SweepCharts.key(c.x) === SweepCharts.key(x) && SweepCharts.key(c.y) === SweepCharts.key(y));
    // Viridis from the lowest value to the highest; the number in white or black, whichever
    // reads better on the cell.
    const shade = (val) => (val === null || val === undefined ? [241, 245, 249] : Pictures.sequential(hi > lo ? (val - lo) / (hi - lo) : 0.5));
    const rows = [...ys].reverse().map((y) => h("tr", {},
      h("th", {}, d.y ? JSON.stringify(y) : ""),
      d.x.values.map((x) => {
        const c = cellOf(x, y);
        const val = c ? c[metric] : null;
        const rgb = shade(val);
        const cellKey = SweepCharts.key([d.x.axis, x, d.y && d.y.axis, y]);
        return h("td", { class: `cell${state.selected === cellKey ? " selected" : ""}`,
          style: `background:${Pictures.css(rgb)};color:${Pictures.textOn(rgb)}`,
          title: c ? `${c.n} members; phases ${JSON.stringify(c.phases)}` : "",
          dataset: { x: JSON.stringify(x), y: JSON.stringify(y) },
          onclick: () => toggleCell(d, x, y, cellKey) }, fmt(val, 3));
      })));
    put(heatmap, h("table", { class: "heatmap" },
      h("caption", {}, `${CELL_METRICS[metric]} by ${d.x.axis}${d.y ? ` × ${d.y.axis}` : ""} (click a cell for its members)`),
      h("tbody", {}, rows, h("tr", {}, h("th", {}, d.y ? `${d.y.axis} ↑ / ${d.x.axis} →` : d.x.axis),
        d.x.values.map((x) => h("th", {}, JSON.stringify(x)))))),
    values.length ? h("div", { id: "heatmap-scale" }, Pictures.colourScale(Pictures.sequential, lo, hi, 220, `${CELL_METRICS[metric]}: `))
      : h("p", { class: "note", id: "heatmap-scale" }, "no finished member yet: no colour scale"));
  }

  // A click on a cell lists its members and picks out their curves; a second click lets go.
  async function toggleCell(d, x, y, cellKey) {
    try {
      if (state.selected === cellKey) {
        state.selected = null;
        state.highlighted = null;
        put(members);
      } else {
        state.selected = cellKey;
        if (!state.members) await loadMembers();
        const match = state.members.filter((m) =>
          SweepCharts.key(m.point[d.x.axis]) === SweepCharts.key(x) && (!d.y || SweepCharts.key(m.point[d.y.axis]) === SweepCharts.key(y)));
        state.highlighted = new Set(match.map((m) => m.experiment_id));
        showMembers(d, x, y, match);
      }
      heatmap.querySelectorAll("td.cell").forEach((td) => td.classList.remove("selected"));
      if (state.selected) {
        const td = [...heatmap.querySelectorAll("td.cell")].find((el) => el.dataset.x === JSON.stringify(x) && el.dataset.y === JSON.stringify(y));
        if (td) td.classList.add("selected");
      }
      drawCurves();
    } catch (err) { fail(err); }
  }

  function showMembers(d, x, y, match) {
    put(members, h("h3", {}, `${d.x.axis}=${JSON.stringify(x)}${d.y ? `, ${d.y.axis}=${JSON.stringify(y)}` : ""}`),
      h("table", { class: "list" }, h("thead", {}, h("tr", {}, ["#", "Status", "Point", "Phase", "Memorised", "Generalised", "Val acc", "Will generalise", "Pruned"].map((c) => h("th", {}, c)))),
        h("tbody", {}, match.map((m) => h("tr", {},
          h("td", {}, h("a", { href: `#/experiments/${m.experiment_id}` }, m.index)), h("td", {}, badge(m.status)),
          h("td", {}, JSON.stringify(m.point)), h("td", {}, m.phase || "—"), h("td", {}, fmt(m.memorization_step)),
          h("td", {}, fmt(m.generalization_step)), h("td", {}, fmt(m.final_val_acc)), h("td", {}, fmt(m.will_generalize)),
          h("td", { class: "pruned-reason", title: m.prune_reason || "" }, m.pruned_at_step != null ? `@${m.pruned_at_step}: ${m.prune_reason}` : "—"))))));
  }

  async function refreshMembers() {
    await loadMembers();
    drawCurves();
    drawSteps();
  }

  for (const sel of [xSel, ySel, mSel]) {
    sel.addEventListener("change", () => {
      state.selected = null;
      state.highlighted = null;
      put(members);
      draw().then(drawCurves).catch(fail);
    });
  }
  colourSel.addEventListener("change", drawCurves);
  stepsSel.addEventListener("change", drawSteps);
  renderHeader();
  await draw();
  await refreshMembers();
  // Members' curves follow the sweep until one refresh after it has finished.
  let membersFinal = SWEEP_FINISHED.includes(sweep.status);
  v.every(LIST_POLL_MS * 2, () => {
    draw().catch(fail);
    refreshHeader().catch(fail);
    if (membersFinal) return;
    membersFinal = SWEEP_FINISHED.includes(sweep.status);
    refreshMembers().catch(fail);
  });
}

const SWEEP_FINISHED = ["succeeded", "failed", "cancelled", "pruned"];

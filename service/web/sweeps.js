// The sweep pages of the dashboard: the list, and a sweep's phase diagram as a heatmap (axes
// and colour chosen from menus; a cell lists its members). Loaded before app.js, whose helpers
// (api, h, put, badge, progressBar, fmt, fail, showError, session) it uses when a route calls it.
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
  const xSel = h("select", { id: "axis-x" }, axes.map((a) => h("option", { value: a }, a)));
  const ySel = h("select", { id: "axis-y" }, h("option", { value: "" }, "(none)"), axes.map((a) => h("option", { value: a }, a)));
  const mSel = h("select", { id: "cell-metric" }, Object.entries(CELL_METRICS).map(([k, l]) => h("option", { value: k }, l)));
  if (axes.length > 1) ySel.value = axes[1];
  const heatmap = h("div", { id: "heatmap" });
  const members = h("div", { id: "cell-members" });
  const header = h("section", { class: "card", id: "sweep-header" });
  main.append(
    header,
    h("section", { class: "card" }, h("h2", {}, "Phase diagram"),
      h("div", { class: "filters" }, h("label", {}, "x ", xSel), h("label", {}, "y ", ySel), h("label", {}, "colour ", mSel)),
      heatmap, members));
  let membersCache = null;

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
      membersCache = null;
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

  async function draw() {
    if (ySel.value === xSel.value) ySel.value = "";
    const q = new URLSearchParams({ x: xSel.value });
    if (ySel.value) q.set("y", ySel.value);
    const d = await api(`/sweeps/${id}/phase-diagram?${q}`, { signal: v.signal });
    const metric = mSel.value;
    const values = d.cells.map((c) => c[metric]).filter((x) => x !== null && x !== undefined);
    const lo = Math.min(...values), hi = Math.max(...values);
    const ys = d.y ? d.y.values : [null];
    const cellOf = (x, y) => d.cells.find((c) => JSON.stringify(c.x) === JSON.stringify(x) && JSON.stringify(c.y) === JSON.stringify(y));
    const shade = (val) => {
      if (val === null || val === undefined) return "#f1f5f9";
      const t = hi > lo ? (val - lo) / (hi - lo) : 0.5;
      return `hsl(${220 - 180 * t}, 70%, ${88 - 40 * t}%)`;
    };
    const rows = [...ys].reverse().map((y) => h("tr", {},
      h("th", {}, d.y ? JSON.stringify(y) : ""),
      d.x.values.map((x) => {
        const c = cellOf(x, y);
        const val = c ? c[metric] : null;
        return h("td", { class: "cell", style: `background:${shade(val)}`, title: c ? `${c.n} members; phases ${JSON.stringify(c.phases)}` : "",
          onclick: () => openCell(d, x, y) }, fmt(val, 3));
      })));
    put(heatmap, h("table", { class: "heatmap" },
      h("caption", {}, `${CELL_METRICS[metric]} by ${d.x.axis}${d.y ? ` × ${d.y.axis}` : ""} (click a cell for its members)`),
      h("tbody", {}, rows, h("tr", {}, h("th", {}, d.y ? `${d.y.axis} ↑ / ${d.x.axis} →` : d.x.axis),
        d.x.values.map((x) => h("th", {}, JSON.stringify(x)))))));
  }

  async function openCell(d, x, y) {
    try {
      membersCache = membersCache || await api(`/sweeps/${id}/members`, { signal: v.signal });
      const match = membersCache.members.filter((m) =>
        JSON.stringify(m.point[d.x.axis]) === JSON.stringify(x) && (!d.y || JSON.stringify(m.point[d.y.axis]) === JSON.stringify(y)));
      put(members, h("h3", {}, `${d.x.axis}=${JSON.stringify(x)}${d.y ? `, ${d.y.axis}=${JSON.stringify(y)}` : ""}`),
        h("table", { class: "list" }, h("thead", {}, h("tr", {}, ["#", "Status", "Point", "Phase", "Memorised", "Generalised", "Val acc"].map((c) => h("th", {}, c)))),
          h("tbody", {}, match.map((m) => h("tr", {},
            h("td", {}, h("a", { href: `#/experiments/${m.experiment_id}` }, m.index)), h("td", {}, badge(m.status)),
            h("td", {}, JSON.stringify(m.point)), h("td", {}, m.phase || "—"), h("td", {}, fmt(m.memorization_step)),
            h("td", {}, fmt(m.generalization_step)), h("td", {}, fmt(m.final_val_acc)))))));
    } catch (err) { fail(err); }
  }

  for (const sel of [xSel, ySel, mSel]) sel.addEventListener("change", () => draw().catch(fail));
  renderHeader();
  await draw();
  v.every(LIST_POLL_MS * 2, () => { membersCache = null; draw().catch(fail); refreshHeader().catch(fail); });
}

// The reproduction pages of the dashboard: the list (each paper's claims, its runs, and Run
// buttons for a write token), and a run's report: the verdict, each claim's expected and
// measured values, the plot that shows the claim (the median steps to memorise and to
// generalise against the claim's axis, log scale: sweepcharts.js), and the members' validation
// accuracy. Loaded before app.js, whose helpers (api, h, put, badge, progressBar, fmt, fail,
// showError, session, when) it uses.
"use strict";

async function reproductionList(main, v) {
  const list = await api("/reproductions", { signal: v.signal });
  const sweeps = (await api("/sweeps", { signal: v.signal })).items;
  const canWrite = session.who && session.who.scope !== "read";
  main.append(h("h1", {}, "Reproductions"));
  for (const r of list.items) {
    const prefix = `${r.name} v${r.version} `;
    const runs = sweeps.filter((s) => s.name.startsWith(prefix));
    main.append(h("section", { class: "card reproduction", "data-name": r.name },
      h("h2", {}, `${r.name} v${r.version}`),
      h("p", {}, r.paper), h("p", { class: "note" }, r.summary),
      h("ul", {}, r.claims.map((c) => h("li", {}, c.says, c.paper ? h("span", { class: "note" }, ` (paper: ${c.paper})`) : null))),
      h("div", { class: "actions" }, canWrite ? Object.entries(r.scales).map(([scale, s]) =>
        h("button", { type: "button", class: `run-${scale}`, onclick: () => run(r.name, scale) },
          `Run at ${scale} scale (${s.n_members} runs)`)) : null),
      runs.length ? h("table", { class: "list" },
        h("thead", {}, h("tr", {}, ["Run", "Status", "Progress", "Created"].map((c) => h("th", {}, c)))),
        h("tbody", {}, runs.map((s) => h("tr", {},
          h("td", {}, h("a", { href: `#/reproductions/${r.name}/runs/${s.id}` }, s.name)),
          h("td", {}, badge(s.status)), h("td", {}, progressBar(Math.round(100 * s.progress), 100)),
          h("td", {}, when(s.created_at)))))) : h("p", { class: "note" }, "no runs yet")));
  }
  if (list.items.length === 0) main.append(h("p", { class: "empty" }, "no reproductions"));

  async function run(name, scale) {
    try {
      const out = await api(`/reproductions/${name}`, {
        method: "POST", body: JSON.stringify({ scale }), headers: { "Content-Type": "application/json" },
      });
      location.hash = `#/reproductions/${name}/runs/${out.sweep.id}`;
    } catch (err) {
      if (err.status === 403) showError("this token may only read: running a reproduction needs a write token");
      else fail(err);
    }
  }
}

async function reproductionRun(main, name, id, v) {
  const header = h("section", { class: "card", id: "reproduction-header" });
  const claims = h("section", { class: "card", id: "reproduction-claims" });
  const chart = h("div", { class: "chart", id: "chart-members-val-acc", "data-chart": "chart-members-val-acc" });
  const stepsCaption = h("figcaption", {}, "Steps to memorise and to generalise");
  const stepsEl = h("div", { id: "claim-plot" });
  const stepsReadout = h("p", { class: "readout note", id: "claim-plot-readout" }, "\u00a0");
  main.append(header, claims,
    h("figure", { class: "card", id: "reproduction-plot" }, stepsCaption, stepsEl, stepsReadout),
    h("figure", { class: "card" }, h("figcaption", {}, "Validation accuracy of each member"), chart));

  async function load() {
    const r = await api(`/reproductions/${name}/runs/${id}`, { signal: v.signal });
    const verdict = r.verdict ? h("span", { class: `badge ${r.verdict === "pass" ? "succeeded" : "failed"}`, id: "verdict" }, r.verdict.toUpperCase())
      : h("span", { class: "badge", id: "verdict" }, "pending");
    put(header, h("h1", {}, `${r.reproduction} v${r.version} (${r.scale} scale) `, verdict),
      h("p", {}, h("a", { href: `#/sweeps/${r.sweep.id}` }, r.sweep.name), " ", badge(r.sweep.status)),
      progressBar(Math.round(100 * r.sweep.progress), 100));
    put(claims, h("h2", {}, "Claims"), r.claims ? h("table", { class: "list" },
      h("thead", {}, h("tr", {}, ["Claim", "Expected", "Measured", "Paper", "Verdict"].map((c) => h("th", {}, c)))),
      h("tbody", {}, r.claims.map((c) => h("tr", { class: `claim ${c.verdict}` },
        h("td", {}, c.says), h("td", {}, c.expected), h("td", {}, c.measured), h("td", {}, c.paper || ""),
        h("td", {}, h("span", { class: `badge ${c.verdict === "pass" ? "succeeded" : "failed"}` }, c.verdict))))))
      : h("p", { class: "note" }, "the claims are judged once every member has finished"));
    // The members the plot is about (plot_members: a grid point; {} for all of them).
    const where = Object.entries(r.plot_members || {});
    const plotted = r.members.filter((m) => where.every(([k, x]) => SweepCharts.key(m.point[k]) === SweepCharts.key(x)));
    const at = where.length ? ` at ${where.map(([k, x]) => `${k}=${JSON.stringify(x)}`).join(", ")}` : "";
    stepsCaption.textContent = `Steps to memorise and to generalise against ${r.plot_axis}${at} (median of the members, log scale)`;
    const rows = SweepCharts.stepsByValue(plotted, r.sweep.grid, r.plot_axis);
    SweepCharts.medians(stepsEl, rows, r.plot_axis, (row) => { stepsReadout.textContent = SweepCharts.describe(row, r.plot_axis); });
    const series = [];
    for (const m of r.members) {
      const metrics = await api(`/experiments/${m.experiment_id}/metrics?names=val_acc&member=0&max_points=400`, { signal: v.signal });
      const s = metrics.series.find((x) => x.name === "val_acc");
      const label = Object.entries(m.point).map(([k, x]) => `${k.split(".").pop()}=${JSON.stringify(x)}`).join(", ");
      if (s) series.push({ label, steps: s.steps, values: s.values });
    }
    Charts.line(chart, { series, yLabel: "val acc" });
    return r.verdict !== null;
  }

  let done = await load();
  v.every(LIST_POLL_MS, () => { if (!done) load().then((d) => { done = d; }).catch(fail); });
}

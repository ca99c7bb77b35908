// One experiment's page of the dashboard: its header (status, phase, Pause/Resume/Cancel), its
// curves with the phases of grokking, the embedding's Fourier spectrum, the circuit per checkpoint
// (circuit.js), its checkpoints and its spec; followed live through its event stream. Loaded
// before app.js, whose helpers (api, h, put, fmt, fail, session...) it uses when a route calls it.
"use strict";

// ---- one experiment ------------------------------------------------------------------------

const CHARTS = [
  { id: "chart-accuracy", title: "Accuracy", names: ["train_acc", "val_acc"], overlay: true },
  { id: "chart-loss", title: "Loss", names: ["train_loss", "val_loss"], logY: true },
  { id: "chart-weight-norm", title: "Weight norm", names: ["weight_norm"] },
  { id: "chart-restricted", title: "Restricted / excluded loss",
    names: ["restricted_loss", "excluded_loss"], logY: true },
  { id: "chart-gini", title: "Gini of the Fourier norms", names: ["gini_embed", "gini_unembed"] },
  { id: "chart-key-freqs", title: "Key frequencies", names: ["key_freq_count"] },
];

function seriesOf(metrics, name, member) {
  return metrics.series.find((s) => s.name === name && s.member === member);
}

function markersOf(summary) {
  const markers = [];
  if (summary && summary.memorization_step != null) {
    markers.push({ step: summary.memorization_step, label: `memorised @${summary.memorization_step}`, color: "#9333ea", row: 1 });
  }
  if (summary && summary.generalization_step != null) {
    markers.push({ step: summary.generalization_step, label: `generalised @${summary.generalization_step}`, color: "#16a34a", row: 2 });
  }
  return markers;
}

function bandsOf(phases) {
  if (!phases) return [];
  const colors = { memorization: "rgba(147,51,234,0.07)", circuit_formation: "rgba(234,88,12,0.07)", cleanup: "rgba(22,163,74,0.08)" };
  return Object.entries(colors)
    .filter(([k]) => phases[k])
    .map(([k, color]) => ({ start: phases[k].start_step, end: phases[k].end_step, color }));
}

async function experimentPage(main, id, v) {
  const state = { experiment: null, metrics: null, analysis: null, member: 0, overlays: new Map() };
  const header = h("section", { class: "card", id: "experiment-header" });
  const charts = h("section", { class: "charts" });
  const chartEls = {};
  for (const c of CHARTS) {
    const el = h("div", { class: "chart", id: c.id, "data-chart": c.id });
    chartEls[c.id] = el;
    charts.append(h("figure", { class: "card" }, h("figcaption", {}, c.title), el));
  }
  const spectrumEl = h("div", { class: "chart", id: "chart-spectrum", "data-chart": "chart-spectrum" });
  const spectrumNote = h("p", { class: "note", id: "spectrum-note" });
  charts.append(h("figure", { class: "card" },
    h("figcaption", {}, "Embedding Fourier spectrum"), spectrumEl, spectrumNote));
  const llcEl = h("figure", { class: "card", id: "llc" });
  charts.append(llcEl);
  const llc = LLC.mount(llcEl, { id, signal: v.signal, member: () => state.member, phases: memberPhases });
  const overlayBox = h("div", { class: "overlay", id: "overlay" });
  const circuitEl = h("section", { class: "card", id: "circuit", hidden: true });
  const checkpoints = h("section", { class: "card", id: "checkpoints" });
  const spec = h("pre", { id: "spec" });
  main.append(header, overlayBox, charts, circuitEl, checkpoints,
    h("section", { class: "card" }, h("h2", {}, "Spec"), spec));
  let circuit = null; // the Circuit section, for a modular task

  async function loadExperiment() {
    state.experiment = await api(`/experiments/${id}`, { signal: v.signal });
    renderHeader();
  }

  async function loadMetrics() {
    const member = state.experiment.spec.ensemble && state.experiment.spec.ensemble.size > 1 ? `?member=${state.member}` : "";
    state.metrics = await api(`/experiments/${id}/metrics${member}`, { signal: v.signal });
  }

  async function loadAnalysis() {
    try {
      state.analysis = await api(`/experiments/${id}/analysis`, { signal: v.signal });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      state.analysis = null;
      spectrumNote.textContent = `analysis unavailable: ${err.message}`;
    }
  }

  // The worker's forecast (modular tasks, once memorised): what a sweep's grokking-aware early
  // stopping acts on.
  function forecastText(f) {
    if (!f) return "—";
    const when = f.generalization_step != null ? `, generalises at ~${f.generalization_step}` : "";
    const signals = Object.entries(f.signals || {}).filter(([, x]) => x != null).map(([k, x]) => `${k} ${fmt(x)}`).join(", ");
    return `will generalise: ${fmt(f.will_generalize)}${when} (at step ${f.step}; ${signals})`;
  }

  function renderHeader() {
    const e = state.experiment;
    const s = e.summary || {};
    const canWrite = session.who && session.who.scope !== "read";
    const canCancel = canWrite && UNFINISHED.includes(e.status);
    // Pause a queued or running job; resume a paused one, or withdraw a pause not yet done.
    const pausing = e.status === "running" && e.pause_requested;
    const canPause = canWrite && ACTIVE.includes(e.status) && !pausing;
    const canResume = canWrite && (e.status === "paused" || pausing);
    const size = (e.spec.ensemble && e.spec.ensemble.size) || 1;
    const memberSelect = size > 1 ? h("label", {}, "Member ",
      h("select", { id: "member", onchange: (ev) => { state.member = Number(ev.target.value); refresh().catch(fail); } },
        Array.from({ length: size }, (_, m) => h("option", { value: m, selected: m === state.member }, m)))) : null;
    put(header, 
      h("h1", {}, e.name, " ", badge(e.status), e.cancel_requested && e.status === "running" ? h("span", { class: "note" }, " cancel requested") : null,
        pausing && !e.cancel_requested ? h("span", { class: "note" }, " pause requested") : null),
      h("dl", { class: "facts" },
        h("dt", {}, "id"), h("dd", {}, h("code", {}, e.id)),
        h("dt", {}, "owner"), h("dd", {}, e.owner),
        h("dt", {}, "phase"), h("dd", { id: "phase" }, s.phase || "—"),
        h("dt", {}, "progress"), h("dd", {}, progressBar(e.progress.step, e.progress.total_steps),
          e.progress.eta_s != null && ACTIVE.includes(e.status) ? ` eta ${Math.round(e.progress.eta_s)} s` : ""),
        h("dt", {}, "memorised at"), h("dd", {}, fmt(s.memorization_step)),
        h("dt", {}, "generalised at"), h("dd", {}, fmt(s.generalization_step)),
        h("dt", {}, "forecast"), h("dd", { id: "forecast" }, forecastText(e.forecast || s.forecast)),
        s.pruning ? h("dt", {}, "pruned") : null,
        s.pruning ? h("dd", { id: "pruning" }, `at step ${s.pruning.step} (score ${fmt(s.pruning.score)}): ${s.pruning.reason}`) : null,
        h("dt", {}, "created"), h("dd", {}, when(e.created_at)),
        h("dt", {}, "finished"), h("dd", {}, when(e.finished_at)),
        h("dt", {}, "worker"), h("dd", {}, e.worker || "—")),
      e.error ? h("p", { class: "error" }, e.error) : null,
      h("div", { class: "actions" }, memberSelect,
        canPause ? h("button", { type: "button", id: "pause", onclick: () => act("pause") }, "Pause") : null,
        canResume ? h("button", { type: "button", id: "resume", onclick: () => act("resume") }, "Resume") : null,
        canCancel ? h("button", { type: "button", id: "cancel", class: "danger", onclick: cancel }, "Cancel") : null),
    );
    spec.textContent = JSON.stringify(e.spec, null, 2);
  }

  // Pause (the worker checkpoints it within a few seconds) or resume (queued again, from that
  // checkpoint); the page follows the job on either way.
  async function act(action) {
    try {
      state.experiment = await api(`/experiments/${id}/${action}`, { method: "POST" });
      renderHeader();
    } catch (err) {
      if (err.status === 403) showError(`this token may only read: ${action === "pause" ? "pausing" : "resuming"} needs a write token`);
      else fail(err);
    }
  }

  async function cancel() {
    if (!confirm(`Cancel ${state.experiment.name}?`)) return;
    try {
      state.experiment = await api(`/experiments/${id}/cancel`, { method: "POST" });
      renderHeader();
    } catch (err) {
      if (err.status === 403) showError("this token may only read: cancelling needs a write token");
      else fail(err);
    }
  }

  // The phases of grokking of the member on screen (analysis.phases), or null.
  function memberPhases() {
    const phases = state.analysis && state.analysis.phases;
    return phases && phases.members ? phases.members.find((m) => m.member === state.member) || phases : phases;
  }

  function renderCharts() {
    const summary = state.analysis ? state.analysis.summary : state.experiment.summary;
    const memberSummary = summary && summary.members ? summary.members.find((m) => m.member === state.member) || summary : summary;
    const markers = markersOf(memberSummary);
    const bands = bandsOf(memberPhases());
    // One step axis for every chart, so that the markers and the phases line up.
    const last = Math.max(1, ...state.metrics.series.map((x) => x.steps[x.steps.length - 1] || 1),
                          ...[...state.overlays.values()].flatMap((o) => o.metrics.series.map((x) => x.steps[x.steps.length - 1] || 1)));
    const xRange = [1, last];
    for (const c of CHARTS) {
      const series = [];
      c.names.forEach((name, i) => {
        const s = seriesOf(state.metrics, name, state.member);
        if (s) series.push({ label: name, steps: s.steps, values: s.values, color: Charts.color(i) });
      });
      if (c.overlay) {
        let k = 0;
        for (const [otherId, other] of state.overlays) {
          k += 1;
          for (const name of c.names) {
            const s = seriesOf(other.metrics, name, 0);
            if (s) series.push({ label: `${other.name} ${name}`, steps: s.steps, values: s.values,
                                 color: Charts.color(c.names.indexOf(name) + 2 * k), dash: [6, 4], id: otherId });
          }
        }
      }
      Charts.line(chartEls[c.id], { series, logY: c.logY, markers, bands, xRange });
    }
    llc.redraw(markers, xRange);
  }

  function renderSpectrum() {
    const f = state.analysis && state.analysis.fourier;
    if (!f) {
      spectrumEl.textContent = "";
      if (state.analysis) {
        spectrumNote.textContent = state.analysis.fourier_unavailable || "no Fourier analysis stored yet";
      }
      return;
    }
    const m = f.members.find((x) => x.member === state.member) || f.members[0];
    const keys = m.key_frequencies.map((k) => k.frequency);
    Charts.spectrum(spectrumEl, m.embedding_spectrum, keys);
    put(spectrumNote, `At step ${f.step}. Key frequencies: `,
      ...m.key_frequencies.map((k, i) => h("span", { class: "key-frequency" },
        `${i ? ", " : ""}${k.frequency} (${(100 * k.share).toFixed(1)}%)`)));
  }

  async function renderCheckpoints() {
    const list = await api(`/experiments/${id}/checkpoints`, { signal: v.signal });
    if (!circuit && state.experiment.spec.task.kind === "modular") {
      circuitEl.hidden = false;
      circuit = Circuit.mount(circuitEl, { id, signal: v.signal, member: () => state.member, phases: memberPhases });
    }
    if (circuit) circuit.update(list);
    put(checkpoints, h("h2", {}, "Checkpoints"),
      list.length === 0 ? h("p", { class: "note" }, "no checkpoint stored yet") :
        h("table", { class: "list" },
          h("thead", {}, h("tr", {}, ["Step", "Size", "sha256", "Stored", ""].map((c) => h("th", {}, c)))),
          h("tbody", {}, list.map((c) => h("tr", {},
            h("td", {}, c.step), h("td", {}, `${(c.size / 1024).toFixed(1)} KiB`),
            h("td", {}, h("code", { title: c.sha256 }, c.sha256.slice(0, 12))), h("td", {}, when(c.created_at)),
            h("td", {}, h("a", { href: `${API}/experiments/${id}/checkpoints/${c.step}`, class: "download",
              onclick: (ev) => { ev.preventDefault(); downloadCheckpoint(c.step); } }, "download")))))));
  }

  async function downloadCheckpoint(step) {
    try {
      const r = await api(`/experiments/${id}/checkpoints/${step}`, { raw: true });
      download(await r.blob(), `${id}-step${step}.safetensors`);
    } catch (err) { fail(err); }
  }

  async function renderOverlayPicker() {
    const page = await api(`/experiments?limit=50`, { signal: v.signal });
    const others = page.items.filter((e) => e.id !== id);
    const select = h("select", { id: "overlay-select" },
      h("option", { value: "" }, "overlay another experiment…"),
      others.map((e) => h("option", { value: e.id }, `${e.name} (${e.status}, ${e.id.slice(0, 8)})`)));
    const chips = h("span", { class: "chips" });
    const drawChips = () => put(chips, ...[...state.overlays].map(([oid, o]) =>
      h("span", { class: "chip" }, o.name, h("button", { type: "button", title: "remove",
        onclick: () => { state.overlays.delete(oid); drawChips(); renderCharts(); } }, "×"))));
    select.addEventListener("change", async () => {
      const oid = select.value;
      select.value = "";
      if (!oid || state.overlays.has(oid)) return;
      try {
        const [other, metrics] = await Promise.all([
          api(`/experiments/${oid}`), api(`/experiments/${oid}/metrics?names=train_acc,val_acc&member=0`)]);
        state.overlays.set(oid, { name: other.name, metrics });
        drawChips();
        renderCharts();
      } catch (err) { fail(err); }
    });
    put(overlayBox, h("label", {}, "Accuracy overlay: ", select), chips);
  }

  async function refresh() {
    await loadExperiment();
    await Promise.all([loadMetrics(), loadAnalysis()]);
    renderCharts();
    renderSpectrum();
    await renderCheckpoints();
  }

  await refresh();
  renderOverlayPicker().catch(fail);
  if (UNFINISHED.includes(state.experiment.status)) follow();

  // Live: the SSE stream of the experiment (fetch, so the token stays in a header), or polling
  // every few seconds when the stream is not there or breaks.
  function follow() {
    let polling = false;
    const poll = () => {
      if (polling) return;
      polling = true;
      v.every(RUN_POLL_MS, async () => {
        try {
          await refresh();
          if (!UNFINISHED.includes(state.experiment.status)) v.stop();
        } catch (err) { fail(err); }
      });
    };
    streamEvents(id, v.signal, {
      // A status frame leaves the spec out: keep the one GET /experiments/{id} gave.
      status: (e) => { state.experiment = { ...e, spec: e.spec || state.experiment.spec }; renderHeader(); },
      // New points: the charts at once; the checkpoints (and the scrubber's steps) at most
      // every RUN_POLL_MS, since the stream does not carry them.
      metrics: (batch) => { addPoints(batch.points); renderCharts(); checkpointsLater(); },
      end: async (e) => { state.experiment = { ...e, spec: e.spec || state.experiment.spec }; await refresh(); },
    }).catch((err) => {
      if (err.name === "AbortError") return;
      console.warn("event stream unavailable, polling instead:", err.message);
      poll();
    });
  }

  let checkpointsAt = 0;
  function checkpointsLater() {
    const now = Date.now();
    if (now - checkpointsAt < RUN_POLL_MS) return;
    checkpointsAt = now;
    renderCheckpoints().catch(fail);
  }

  function addPoints(points) {
    for (const p of points) {
      let s = state.metrics.series.find((x) => x.name === p.name && x.member === p.member);
      if (!s) {
        s = { name: p.name, member: p.member, steps: [], values: [] };
        state.metrics.series.push(s);
      }
      if (s.steps.length && s.steps[s.steps.length - 1] >= p.step) continue;
      s.steps.push(p.step);
      s.values.push(p.value);
    }
  }
}

// Reads GET /experiments/{id}/events (text/event-stream) with fetch and calls handlers[event]
// with each event's JSON data; resumes after a dropped connection with Last-Event-ID. Rejects
// when the stream cannot be opened (404/405 where the server has none, network errors) so the
// caller can poll instead; resolves after the "end" event.
async function streamEvents(id, signal, handlers) {
  let lastId = null;
  for (let attempt = 0; attempt < 3; attempt++) {
    const headers = { Authorization: `Bearer ${session.token}`, Accept: "text/event-stream" };
    if (lastId !== null) headers["Last-Event-ID"] = lastId;
    const response = await fetch(`${API}/experiments/${id}/events`, { headers, signal });
    if (!response.ok || !response.body) throw new Error(`event stream answered ${response.status}`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let ended = false;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith(":")) continue; // a ping
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") event = val;
          else if (field === "data") data.push(val);
          else if (field === "id") lastId = val;
        }
        if (data.length === 0) continue;
        const handler = handlers[event];
        if (handler) await handler(JSON.parse(data.join("\n")));
        if (event === "end") ended = true;
      }
    }
    if (ended) return;
  }
  throw new Error("event stream kept closing");
}

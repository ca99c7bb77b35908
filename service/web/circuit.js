// The "Circuit" section of an experiment's page (modular tasks): what the model computes at a
// stored checkpoint, picked with a scrubber over the checkpoints' steps on which the phases of
// grokking are marked. Four pictures, each from its own endpoint under
// /experiments/{id}/checkpoints/{step}/: the embedding's clocks (embedding), the neurons by
// frequency (neurons), activation waves (waves) and the attention of '=' (attention). A picture a
// worker is still computing answers 202 and is asked again; one that does not apply (422) says
// why. Loaded before app.js, whose helpers (api, h, put, fmt) it uses when the page calls it.
"use strict";

const Circuit = (() => {
  const PHASES = [
    { key: "memorization", label: "memorization", colour: "rgba(147, 51, 234, 0.28)" },
    { key: "circuit_formation", label: "circuit formation", colour: "rgba(234, 88, 12, 0.28)" },
    { key: "cleanup", label: "cleanup", colour: "rgba(22, 163, 74, 0.28)" },
  ];
  const PICTURES = [
    { name: "embedding", title: "Embedding clocks", note: "Each key frequency k's plane: residue r's embedding projected on cos and sin of 2πkr/p. A model that uses k puts the p residues on a circle, r at angle 2πkr/p (dashed: the mean radius; the faint line joins r to r+1; colour: the residue)." },
    { name: "neurons", title: "Neurons by frequency", note: "Each MLP neuron's share of activation variance explained by its one best frequency, sorted. After grokking most neurons read a single key frequency (fraction near 1)." },
    { name: "waves", title: "Activation waves", note: "Neuron activations and the logit of one answer c over every input (a, b). Once the circuit has formed, a neuron is periodic in a and in b at its frequency (a grid of blobs) and the logit is periodic in a + b (diagonal stripes, highest where a + b = c mod p); while memorising, noise." },
    { name: "attention", title: "Attention from '='", note: "Each head's attention of the '=' position to a and to b over every input (a, b)." },
  ];

  function sleep(ms, signal) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(resolve, ms);
      signal.addEventListener("abort", () => {
        clearTimeout(timer);
        reject(new DOMException("aborted", "AbortError"));
      }, { once: true });
    });
  }

  // A picture's JSON: {data} when ready, {reason} when it does not apply (422); asked again
  // after Retry-After (1-2 s) while a worker computes it (202). Other errors throw.
  async function fetchPicture(path, signal, onPending) {
    for (;;) {
      let response;
      try {
        response = await api(path, { raw: true, signal });
      } catch (err) {
        if (err.status === 422) return { reason: err.message };
        throw err;
      }
      if (response.status !== 202) return { data: await response.json() };
      onPending();
      const after = Number(response.headers.get("Retry-After")) || 1;
      await sleep(1000 * Math.min(2, Math.max(1, after)), signal);
    }
  }

  // Mounts the section in `section`; ctx: {id, signal, member(), phases()}. Returns
  // {update(checkpoints)} for the page to call with the stored checkpoints after each refresh.
  function mount(section, ctx) {
    // loading: picture name -> the AbortController of its load in flight.
    const state = { steps: [], step: null, member: null, answer: 0, cache: new Map(), loading: {}, timer: null };
    const figures = {};
    const slider = h("input", { type: "range", id: "circuit-slider", min: 0, max: 1, step: 1,
                                "aria-label": "checkpoint step" });
    const stepOut = h("output", { id: "circuit-step" }, "—");
    const bands = h("div", { class: "scrub-bands" });
    const ticks = h("div", { class: "scrub-ticks" });
    const phaseKey = h("div", { class: "legend", id: "circuit-phases" });
    const answer = h("input", { type: "number", id: "circuit-answer", min: 0, value: 0, step: 1 });
    put(section, h("h2", {}, "Circuit"),
      h("div", { class: "scrubber", id: "circuit-scrubber" },
        h("div", { class: "scrub-head" }, h("label", { for: "circuit-slider" }, "Checkpoint at step "), stepOut),
        h("div", { class: "scrub-track" }, bands, slider, ticks), phaseKey),
      h("div", { class: "circuit-grid" }, PICTURES.map((pic) => {
        const body = h("div", { class: "picture-body" });
        const status = h("p", { class: "picture-status note" });
        const readout = h("p", { class: "readout note" }, "\u00a0");
        const controls = pic.name === "waves" ? h("label", { class: "picture-controls" }, "logit of answer c = ", answer) : null;
        const fig = h("figure", { class: "picture", id: `circuit-${pic.name}`, "data-picture": pic.name },
          h("figcaption", {}, pic.title), controls, status, body, readout, h("p", { class: "note small" }, pic.note));
        figures[pic.name] = { fig, body, status, readout };
        return fig;
      })));

    // The slider runs over steps (0 to the last checkpoint) so that the phases sit where they
    // happened; it snaps to the nearest stored checkpoint, and the arrow keys go one by one.
    const nearest = (x) => state.steps.reduce((a, b) => (Math.abs(b - x) < Math.abs(a - x) ? b : a));
    const pos = (x) => `${(100 * x) / Math.max(1, Number(slider.max))}%`;
    slider.addEventListener("input", () => { choose(nearest(Number(slider.value)), 150); });
    slider.addEventListener("keydown", (ev) => {
      const i = state.steps.indexOf(state.step);
      const to = { ArrowLeft: i - 1, ArrowDown: i - 1, ArrowRight: i + 1, ArrowUp: i + 1,
                   Home: 0, End: state.steps.length - 1, PageDown: i - 3, PageUp: i + 3 }[ev.key];
      if (to === undefined) return;
      ev.preventDefault();
      choose(state.steps[Math.max(0, Math.min(state.steps.length - 1, to))], 0);
    });
    answer.addEventListener("change", () => {
      const c = Math.round(Number(answer.value));
      if (!Number.isFinite(c) || c < 0 || (answer.max && c > Number(answer.max))) {
        answer.value = state.answer;
        return;
      }
      state.answer = c;
      if (state.step !== null) drawAll(["waves"]);
    });

    function choose(step, delay) {
      slider.value = step;
      stepOut.textContent = step;
      if (step === state.step) return;
      state.step = step;
      clearTimeout(state.timer);
      state.timer = setTimeout(() => drawAll(PICTURES.map((p) => p.name)), delay);
    }

    function drawTrack() {
      const last = Math.max(...state.steps, 1);
      slider.max = last;
      put(ticks, state.steps.map((s, i) => h("span", { class: "tick", style: `left:${pos(s)}`, title: `step ${s}` },
        state.steps.length <= 12 || i === 0 || i === state.steps.length - 1 ? h("span", { class: "tick-label" }, s) : null)));
      const phases = ctx.phases();
      const drawn = PHASES.filter((p) => phases && phases[p.key]);
      put(bands, drawn.map((p) => {
        const { start_step: a, end_step: b } = phases[p.key];
        const left = Math.min(a, last), right = Math.min(Math.max(b, a), last);
        // Named on the band where it has room; the key below names every band.
        return h("div", { class: "scrub-band", "data-phase": p.key, title: `${p.label}: steps ${a}–${b}`,
          style: `left:${pos(left)};width:${pos(right - left)};background:${p.colour}` },
        (right - left) / last >= 0.1 ? h("span", {}, p.label) : null);
      }));
      put(phaseKey, drawn.length ? drawn.map((p) => h("span", { class: "legend-item" },
        h("span", { class: "swatch", style: `background:${p.colour}` }),
        `${p.label} ${phases[p.key].start_step}–${phases[p.key].end_step}`)) :
        h("span", { class: "note" }, "phases of grokking: not known yet"));
    }

    function update(checkpoints) {
      const steps = [...new Set(checkpoints.map((c) => c.step))].sort((a, b) => a - b);
      const changed = steps.join() !== state.steps.join();
      state.steps = steps;
      if (steps.length === 0) {
        section.dataset.step = "";
        stepOut.textContent = "—";
        slider.disabled = true;
        for (const f of Object.values(figures)) { put(f.body); f.status.textContent = "no checkpoint stored yet"; }
        drawTrack();
        return;
      }
      slider.disabled = false;
      drawTrack();
      // First time: the last checkpoint (the trained model); later, stay where the user is.
      if (state.step === null || !steps.includes(state.step)) choose(steps[steps.length - 1], 0);
      else if (state.member !== ctx.member()) drawAll(PICTURES.map((p) => p.name));
      else if (changed) slider.value = state.step;
    }

    // Draws the named pictures at the chosen step; a newer choice cancels their older loads.
    function drawAll(names) {
      const step = state.step;
      state.member = ctx.member();
      for (const name of names) {
        if (state.loading[name]) state.loading[name].abort();
        const controller = new AbortController();
        ctx.signal.addEventListener("abort", () => controller.abort(), { once: true });
        state.loading[name] = controller;
        draw(name, step, controller.signal).catch((err) => {
          if (err.name === "AbortError") return;
          if (err.status === 401) fail(err); // signed out: back to the sign-in form
          else show(name, step, { error: err.message });
        });
      }
    }

    async function draw(name, step, signal) {
      const q = new URLSearchParams({ member: ctx.member() });
      if (name === "waves") q.set("answer", state.answer);
      const path = `/experiments/${ctx.id}/checkpoints/${step}/${name}?${q}`;
      let result = state.cache.get(path);
      if (!result) {
        result = await fetchPicture(path, signal, () => {
          figures[name].fig.dataset.state = "pending";
          figures[name].status.textContent = "computing…";
        });
        state.cache.set(path, result);
      }
      if (!signal.aborted) show(name, step, result);
    }

    function show(name, step, result) {
      const f = figures[name];
      f.fig.dataset.step = step;
      f.readout.textContent = "\u00a0";
      f.status.classList.toggle("error", Boolean(result.error));
      if (result.data) {
        f.status.textContent = "";
        f.fig.dataset.state = "drawn";
        put(f.body, RENDER[name](result.data, f));
      } else {
        f.fig.dataset.state = result.reason ? "unavailable" : "error";
        f.status.textContent = result.reason || result.error;
        put(f.body);
      }
      if (Object.values(figures).every((x) => x.fig.dataset.step === String(step))) section.dataset.step = step;
    }

    const RENDER = {
      embedding(d) {
        if (!d.clocks.length) return h("p", { class: "note" }, "no key frequency at this step");
        return [h("div", { class: "clocks" }, d.clocks.map((c) => h("div", { class: "clock" },
          h("div", { class: "clock-title" }, `k = ${c.frequency}`,
            h("span", { class: "note" }, ` radius spread ${fmt(c.radius_spread, 2)}`)),
          Pictures.clock(c, d.p)))), Pictures.hueKey(d.p)];
      },
      neurons(d, f) {
        const width = Math.max(320, Math.min(720, f.body.clientWidth || 480));
        const hover = (n) => { f.readout.textContent = n ? `neuron ${n.neuron}: frequency ${n.frequency}, fraction ${fmt(n.fraction, 3)}` : "\u00a0"; };
        return [h("p", { class: "share" }, "Share of neurons above 0.9: ",
          h("strong", { id: "neuron-share" }, `${(100 * d.share_above_0_9).toFixed(1)}%`), ` of ${d.n_neurons}`),
        Pictures.neuronBars(d.neurons, d.key_frequencies, width, hover), Pictures.frequencyLegend(d.neurons, d.key_frequencies)];
      },
      waves(d, f) {
        answer.max = d.p - 1;
        const cell = (label) => (a, b, v) => {
          f.readout.textContent = a === null ? "\u00a0" : `${label}: a=${a}, b=${b}: ${fmt(v, 3)}`;
        };
        const one = (title, values, label, dataset) => {
          const { lo, hi, map } = Pictures.signedScale(values);
          return h("div", { class: "heat", dataset }, h("div", { class: "heat-title" }, title),
            Pictures.heatmap(values, { lo, hi, map, size: 132, onHover: cell(label) }),
            Pictures.colourScale(map, lo, hi, 132));
        };
        return h("div", { class: "heats" },
          d.neurons.map((n) => one(`neuron ${n.neuron} (k = ${n.frequency}, ${fmt(n.fraction, 2)})`, n.values,
            `neuron ${n.neuron}`, { neuron: n.neuron })),
          one(`logit of c = ${d.logit.answer}`, d.logit.values, `logit of ${d.logit.answer}`, { answer: d.logit.answer }));
      },
      attention(d, f) {
        if (!d.heads.length) return h("p", { class: "note" }, "no attention head");
        const cell = (label) => (a, b, v) => {
          f.readout.textContent = a === null ? "\u00a0" : `${label}: a=${a}, b=${b}: ${fmt(v, 3)}`;
        };
        return [h("div", { class: "heads" }, d.heads.map((hd) => h("div", { class: "head" },
          h("div", { class: "heat-title" }, `layer ${hd.layer} head ${hd.head}`),
          h("div", { class: "heats" }, [["to a", hd.to_a], ["to b", hd.to_b]].map(([to, values]) =>
            h("div", { class: "heat" }, h("div", { class: "heat-title note" }, to),
              Pictures.heatmap(values, { lo: 0, hi: 1, map: Pictures.sequential, size: 110,
                onHover: cell(`L${hd.layer}H${hd.head} ${to}`) }))))))),
        Pictures.colourScale(Pictures.sequential, 0, 1, 150, "attention ")];
      },
    };

    return { update };
  }

  return { mount, sleep };
})();

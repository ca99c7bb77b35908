// The "Local learning coefficient" card of an experiment's page: the LLC over the stored
// checkpoints (GET /experiments/{id}/llc), drawn on the same step axis as the progress
// measures, with the phases of grokking shaded. A worker estimates it per checkpoint (SGLD, a
// few seconds to a minute each), so it starts on a click, not on every page view; the card
// then shows how many checkpoints are done until the series is complete. Loaded before app.js,
// whose helpers (api, h, put) it uses when the page calls it.
"use strict";

const LLC = (() => {
  function mount(el, { id, signal, member, phases }) {
    const chart = h("div", { class: "chart", id: "chart-llc", "data-chart": "chart-llc" });
    const note = h("p", { class: "note", id: "llc-note" },
      "The effective complexity of the solution at each checkpoint (Lau et al. 2023), " +
      "estimated by SGLD chains around it: it falls when the network trades a memorising " +
      "solution for a simpler one.");
    const button = h("button", { type: "button", id: "llc-estimate", onclick: () => run().catch(show) },
      "Estimate at every checkpoint");
    put(el, h("figcaption", {}, "Local learning coefficient"), chart, note, button);
    let data = null;
    let view = { markers: [], xRange: undefined };

    function show(err) {
      if (err.name === "AbortError") return;
      button.disabled = false;
      note.textContent = `LLC unavailable: ${err.message}`;
    }

    async function run() {
      button.disabled = true;
      for (;;) {
        const response = await api(`/experiments/${id}/llc`, { raw: true, signal });
        const body = await response.json();
        if (response.status !== 202) { data = body; break; }
        note.textContent = `estimating: ${body.computed} of ${body.of} checkpoints done` +
          (body.failed ? `, ${body.failed} failed` : "");
        const after = Number(response.headers.get("Retry-After")) || 5;
        await Circuit.sleep(1000 * Math.min(5, Math.max(1, after)), signal);
      }
      button.hidden = true;
      redraw();
    }

    // Redraws for the member on screen, on the charts' step axis (markers and xRange).
    function redraw(markers, xRange) {
      if (markers) view = { markers, xRange };
      if (!data) return;
      const s = data.series.find((x) => x.name === "llc" && x.member === member());
      const series = s ? [{ label: "llc", steps: s.steps, values: s.values, color: Charts.color(3) }] : [];
      // Log y (linear when an estimate is not positive, as at an initialisation).
      Charts.line(chart, { series, logY: true, markers: view.markers, xRange: view.xRange,
                           bands: bandsOf(phases()) });
      const st = data.setting;
      put(note, `${s ? s.steps.length : 0} checkpoints; SGLD ${st.chains} chains × ${st.draws} ` +
        `draws after ${st.burnin} burn-in, ε·nβ ${st.eps_nbeta}, γ ${st.localization}, nβ ${st.nbeta}, ` +
        `seed ${st.seed} (setting v${st.version}).`,
        ...data.failed.map((f) => h("span", { class: "error" }, ` Step ${f.step}: ${f.detail}`)));
    }

    return { redraw };
  }

  return { mount };
})();

// Charts of the dashboard, drawn with uPlot (vendored: /ui/vendor/uplot).
// Every chart element gets data-series-count (the data series drawn) once it has drawn, so a
// browser test can tell that a chart holds what it should.
"use strict";

const Charts = (() => {
  const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
                   "#ca8a04", "#db2777", "#4b5563", "#65a30d"];
  const HEIGHT = 240;

  function color(i) { return PALETTE[i % PALETTE.length]; }

  function widthOf(el) { return Math.max(280, Math.floor(el.clientWidth || 520) - 4); }

  // One x array for uPlot: the union of every series' steps (steps < 1 dropped on a log axis),
  // and each series' values at those steps (null where it has none; gaps are spanned).
  function align(series, logX) {
    const steps = new Set();
    for (const s of series) s.steps.forEach((x) => { if (!logX || x >= 1) steps.add(x); });
    const xs = [...steps].sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const columns = series.map((s) => {
      const col = new Array(xs.length).fill(null);
      s.steps.forEach((x, i) => { if (index.has(x)) col[index.get(x)] = s.values[i]; });
      return col;
    });
    return [xs, ...columns];
  }

  // Vertical lines at given steps (memorisation, generalisation) with their labels.
  function markerPlugin(markers) {
    return {
      hooks: {
        draw: (u) => {
          const { ctx, bbox } = u;
          ctx.save();
          ctx.font = `${Math.round(11 * devicePixelRatio)}px sans-serif`;
          for (const m of markers) {
            const x = Math.round(u.valToPos(m.step, "x", true));
            if (!(x >= bbox.left && x <= bbox.left + bbox.width)) continue;
            ctx.strokeStyle = m.color;
            ctx.fillStyle = m.color;
            ctx.lineWidth = 1.5 * devicePixelRatio;
            ctx.setLineDash([5 * devicePixelRatio, 4 * devicePixelRatio]);
            ctx.beginPath();
            ctx.moveTo(x, bbox.top);
            ctx.lineTo(x, bbox.top + bbox.height);
            ctx.stroke();
            const width = ctx.measureText(m.label).width;
            const pad = 4 * devicePixelRatio;
            const left = x + pad + width > bbox.left + bbox.width ? x - pad - width : x + pad;
            ctx.fillText(m.label, left, bbox.top + (m.row || 1) * 13 * devicePixelRatio);
          }
          ctx.restore();
        },
      },
    };
  }

  // Shaded step ranges (the phases of grokking) under the series.
  function bandPlugin(bands) {
    return {
      hooks: {
        drawClear: (u) => {
          const { ctx, bbox } = u;
          ctx.save();
          for (const b of bands) {
            const x0 = Math.max(bbox.left, u.valToPos(Math.max(b.start, 1), "x", true));
            const x1 = Math.min(bbox.left + bbox.width, u.valToPos(Math.max(b.end, 1), "x", true));
            if (!(x1 > x0)) continue;
            ctx.fillStyle = b.color;
            ctx.fillRect(x0, bbox.top, x1 - x0, bbox.height);
          }
          ctx.restore();
        },
      },
    };
  }

  // A log axis: a tick per power of ten only, labelled readably however small.
  function decades(_u, _axis, lo, hi) {
    const out = [];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
      const v = 10 ** e;
      if (v >= lo * 0.999 && v <= hi * 1.001) out.push(v);
    }
    return out.length ? out : [lo, hi];
  }

  function logLabels(_u, splits) {
    return splits.map((v) => (v == null ? "" : v >= 0.01 && v < 1e5 ? String(+v.toPrecision(3)) : v.toExponential(0)));
  }

  function replace(el, plot, seriesCount) {
    if (el._plot) el._plot.destroy();
    el._plot = plot;
    el.dataset.seriesCount = String(seriesCount);
    el.dataset.drawn = "true";
  }

  // A line chart over steps on a log axis. spec: {series: [{label, steps, values, color,
  // dash, width}], logY, markers: [{step, label, color}], bands: [{start, end, color}], yLabel}.
  function line(el, spec) {
    const series = spec.series.filter((s) => s.steps.some((x) => x >= 1));
    const data = align(series, true);
    const positive = data.slice(1).every((col) => col.every((v) => v === null || v > 0));
    const logY = Boolean(spec.logY) && positive;
    const opts = {
      width: widthOf(el),
      height: HEIGHT,
      scales: {
        x: { time: false, distr: 3, range: (_u, lo, hi) => spec.xRange || [lo, hi] },
        y: logY ? { distr: 3 } : { auto: true },
      },
      axes: [
        { label: "step" },
        logY ? { label: spec.yLabel || "", size: 60, splits: decades, values: logLabels }
             : { label: spec.yLabel || "", size: 60 },
      ],
      series: [
        { label: "step" },
        ...series.map((s, i) => ({
          label: s.label,
          stroke: s.color || color(i),
          width: s.width || 1.5,
          dash: s.dash,
          spanGaps: true,
          points: { show: false },
        })),
      ],
      legend: { live: true },
      plugins: [markerPlugin(spec.markers || []), bandPlugin(spec.bands || [])],
    };
    el.innerHTML = "";
    if (series.length === 0) {
      el.textContent = "no data yet";
      replace(el, null, 0);
      return null;
    }
    const plot = new uPlot(opts, data, el);
    replace(el, plot, series.length);
    return plot;
  }

  // The embedding's Fourier spectrum as bars, the key frequencies in their own colour.
  // spectrum: [{frequency, norm}]; keys: [frequency, ...].
  function spectrum(el, points, keys) {
    const keySet = new Set(keys);
    const xs = points.map((p) => p.frequency);
    const other = points.map((p) => (keySet.has(p.frequency) ? null : p.norm));
    const key = points.map((p) => (keySet.has(p.frequency) ? p.norm : null));
    const bars = uPlot.paths.bars({ size: [0.8, 24], align: 0 });
    const opts = {
      width: widthOf(el),
      height: HEIGHT,
      scales: {
        x: { time: false, range: (_u, lo, hi) => [lo - 0.6, hi + 0.6] },
        y: { range: (_u, _lo, hi) => [0, hi * 1.05] },
      },
      axes: [{ label: "frequency k", incrs: [1, 2, 5, 10, 20, 50, 100] }, { label: "norm", size: 60 }],
      series: [
        { label: "k" },
        { label: "other frequencies", stroke: "#94a3b8", fill: "#cbd5e1", paths: bars,
          points: { show: false } },
        { label: "key frequencies", stroke: "#dc2626", fill: "#f87171", paths: bars,
          points: { show: false } },
      ],
    };
    el.innerHTML = "";
    const plot = new uPlot(opts, [xs, other, key], el);
    replace(el, plot, 2);
    el.dataset.keyFrequencies = keys.join(",");
    return plot;
  }

  // Keep every chart as wide as its box.
  window.addEventListener("resize", () => {
    document.querySelectorAll("[data-drawn]").forEach((el) => {
      if (el._plot) el._plot.setSize({ width: widthOf(el), height: HEIGHT });
    });
  });

  // A y-axis title on a canvas, written upwards, centred on the box's height at x.
  function yTitle(ctx, text, x, box) {
    ctx.save();
    ctx.translate(x, (box.top + box.bottom) / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "center";
    ctx.fillText(text, 0, 0);
    ctx.restore();
  }

  return { line, spectrum, color, yTitle };
})();

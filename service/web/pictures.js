// Canvas pictures of the dashboard that uPlot does not draw: the embedding clocks, the neurons'
// bars, heatmaps with their colour scales, and the colour maps they share with the sweep page.
// Every picture sets data- attributes that say what it drew (data-points, data-bars, data-rows),
// so a browser test can tell that it holds what it should.
"use strict";

const Pictures = (() => {
  // Perceptually even colour maps: viridis (sequential: attention, the phase diagram) and a
  // blue-white-red one centred on zero (signed activations and logits).
  const VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
                   [31, 158, 137], [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37]];
  const RED_BLUE = [[33, 102, 172], [103, 169, 207], [209, 229, 240], [247, 247, 247],
                    [253, 219, 199], [239, 138, 98], [178, 24, 43]];
  const DARK_TEXT = "#0f172a";
  const OTHER = "#94a3b8"; // a neuron whose frequency is not a key frequency

  function ramp(stops, t) {
    const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (stops.length - 1);
    const i = Math.min(stops.length - 2, Math.floor(x));
    const f = x - i;
    return stops[i].map((v, j) => Math.round(v + (stops[i + 1][j] - v) * f));
  }
  const sequential = (t) => ramp(VIRIDIS, t);
  const diverging = (t) => ramp(RED_BLUE, t); // t = 0.5 is zero
  const positive = (t) => ramp(RED_BLUE, 0.5 + t / 2); // its white-to-red half, for values >= 0
  const css = ([r, g, b]) => `rgb(${r}, ${g}, ${b})`;

  // WCAG relative luminance.
  function luminance([r, g, b]) {
    const lin = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
  }
  // Black or white, whichever contrasts more: one of them always reaches 4.58:1 (WCAG AA).
  function textOn(rgb) {
    const l = luminance(rgb);
    return 1.05 / (l + 0.05) > (l + 0.05) / 0.05 ? "#fff" : "#000";
  }

  // The colour of residue r of p: a hue wheel, so neighbours on the wheel are neighbours mod p.
  const hue = (r, p) => `hsl(${Math.round((360 * r) / p)}, 80%, 45%)`;

  // A canvas of CSS size w x h, sharp on a high-density screen; its context draws in CSS pixels.
  function canvas(w, h, dataset = {}) {
    const c = document.createElement("canvas");
    const ratio = window.devicePixelRatio || 1;
    c.width = Math.round(w * ratio);
    c.height = Math.round(h * ratio);
    c.style.width = `${w}px`;
    c.style.height = `${h}px`;
    Object.assign(c.dataset, dataset);
    const ctx = c.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.font = "11px system-ui, sans-serif";
    return [c, ctx];
  }

  const short = (v) => (Math.abs(v) >= 100 || v === 0 ? String(Math.round(v)) : String(+v.toPrecision(2)));

  // One key frequency's clock: each residue's embedding projected on the (cos, sin) plane of
  // frequency k, coloured by residue, residues r and r+1 joined faintly. A model that uses the
  // frequency puts the p points on a circle (radius spread near 0), r at angle 2*pi*k*r/p.
  function clock(c, p, size = 176) {
    const [el, ctx] = canvas(size, size, { frequency: c.frequency, points: c.points.length });
    const mid = size / 2;
    const reach = Math.max(1e-9, ...c.points.map((q) => Math.max(Math.abs(q.x), Math.abs(q.y))));
    const scale = (mid - 12) / reach;
    const at = (q) => [mid + q.x * scale, mid - q.y * scale];
    ctx.strokeStyle = "#e2e8f0";
    ctx.beginPath();
    ctx.moveTo(4, mid); ctx.lineTo(size - 4, mid); ctx.moveTo(mid, 4); ctx.lineTo(mid, size - 4);
    ctx.stroke();
    if (c.radius_mean > 0) {
      ctx.setLineDash([3, 3]);
      ctx.beginPath();
      ctx.arc(mid, mid, c.radius_mean * scale, 0, 2 * Math.PI);
      ctx.stroke();
      ctx.setLineDash([]);
    }
    const byResidue = [...c.points].sort((a, b) => a.residue - b.residue);
    ctx.strokeStyle = "rgba(100, 116, 139, 0.22)";
    ctx.beginPath();
    byResidue.forEach((q, i) => { const [x, y] = at(q); if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y); });
    ctx.closePath();
    ctx.stroke();
    for (const q of byResidue) {
      const [x, y] = at(q);
      ctx.fillStyle = hue(q.residue, p);
      ctx.beginPath();
      ctx.arc(x, y, 3.2, 0, 2 * Math.PI);
      ctx.fill();
    }
    const zero = byResidue.find((q) => q.residue === 0);
    if (zero) {
      const [x, y] = at(zero);
      ctx.strokeStyle = DARK_TEXT;
      ctx.beginPath();
      ctx.arc(x, y, 4.5, 0, 2 * Math.PI);
      ctx.stroke();
      ctx.fillStyle = DARK_TEXT;
      ctx.fillText("0", x + (x > mid ? -14 : 7), y + (y > mid ? -6 : 12));
    }
    return el;
  }

  // A horizontal bar of the residue hues, 0 to p-1: the key to the clocks' colours.
  function hueKey(p, width = 176) {
    const [el, ctx] = canvas(width, 10);
    for (let r = 0; r < p; r++) {
      ctx.fillStyle = hue(r, p);
      ctx.fillRect((r * width) / p, 0, width / p + 0.5, 10);
    }
    return keyRow(el, "residue 0", `${p - 1}`);
  }

  // The colour of frequency k among the key frequencies (grey for any other).
  function frequencyColour(k, keys) {
    const i = keys.indexOf(k);
    return i < 0 ? OTHER : Charts.color(i);
  }

  // Every neuron's fraction of variance explained by its frequency, sorted, a bar each, coloured
  // by that frequency; a dashed line at 0.9. onHover(neuron | null) follows the pointer.
  function neuronBars(neurons, keys, width, onHover, height = 210) {
    const [el, ctx] = canvas(width, height, { bars: neurons.length });
    const box = { left: 38, right: width - 8, top: 8, bottom: height - 22 };
    const y = (f) => box.bottom - f * (box.bottom - box.top);
    ctx.fillStyle = "#64748b";
    ctx.strokeStyle = "#e2e8f0";
    ctx.textAlign = "right";
    for (const f of [0, 0.25, 0.5, 0.75, 1]) {
      ctx.beginPath(); ctx.moveTo(box.left, y(f)); ctx.lineTo(box.right, y(f)); ctx.stroke();
      ctx.fillText(String(f), box.left - 5, y(f) + 4);
    }
    Charts.yTitle(ctx, "fraction", 10, box);
    ctx.textAlign = "center";
    ctx.fillText(`${neurons.length} neurons, sorted by fraction`, (box.left + box.right) / 2, height - 6);
    const step = (box.right - box.left) / Math.max(1, neurons.length);
    neurons.forEach((n, i) => {
      ctx.fillStyle = frequencyColour(n.frequency, keys);
      ctx.fillRect(box.left + i * step, y(n.fraction), Math.max(step - (step > 3 ? 1 : 0), 0.8), box.bottom - y(n.fraction));
    });
    ctx.strokeStyle = "#dc2626";
    ctx.setLineDash([5, 4]);
    ctx.beginPath(); ctx.moveTo(box.left, y(0.9)); ctx.lineTo(box.right, y(0.9)); ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = "#dc2626";
    ctx.textAlign = "right";
    ctx.fillText("0.9", box.right - 2, y(0.9) - 4);
    const pick = (ev) => {
      const i = Math.floor((ev.offsetX - box.left) / step);
      onHover(i >= 0 && i < neurons.length ? neurons[i] : null);
    };
    el.addEventListener("mousemove", pick);
    el.addEventListener("mouseleave", () => onHover(null));
    return el;
  }

  // The legend of the bars: a swatch per key frequency with its neuron count, and "other".
  function frequencyLegend(neurons, keys) {
    const count = (k) => neurons.filter((n) => n.frequency === k).length;
    const other = neurons.filter((n) => !keys.includes(n.frequency)).length;
    const item = (colour, text) => {
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = colour;
      const span = document.createElement("span");
      span.className = "legend-item";
      span.append(sw, text);
      return span;
    };
    const box = document.createElement("div");
    box.className = "legend";
    box.append(...keys.map((k) => item(frequencyColour(k, keys), `k = ${k}: ${count(k)}`)));
    if (other) box.append(item(OTHER, `other: ${other}`));
    return box;
  }

  // A heatmap of values[row][col] (row: a, down; column: b, across), coloured by map over
  // [lo, hi]; onHover(row, col, value) follows the pointer (null when it leaves).
  function heatmap(values, { lo, hi, map, size = 150, onHover }) {
    const rows = values.length;
    const cols = rows ? values[0].length : 0;
    const pad = { left: 14, bottom: 14 };
    const [el, ctx] = canvas(size + pad.left, size + pad.bottom, { rows, cols });
    const image = document.createElement("canvas");
    image.width = Math.max(1, cols);
    image.height = Math.max(1, rows);
    const pixels = image.getContext("2d").createImageData(image.width, image.height);
    const span = hi > lo ? hi - lo : 1;
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const [R, G, B] = map((values[r][c] - lo) / span);
        pixels.data.set([R, G, B, 255], 4 * (r * cols + c));
      }
    }
    image.getContext("2d").putImageData(pixels, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(image, pad.left, 0, size, size);
    ctx.fillStyle = "#64748b";
    ctx.textAlign = "center";
    ctx.fillText("b →", pad.left + size / 2, size + 11);
    ctx.fillText("a", 6, size / 2 - 2);
    ctx.fillText("↓", 6, size / 2 + 10);
    if (onHover) {
      el.addEventListener("mousemove", (ev) => {
        const c = Math.floor(((ev.offsetX - pad.left) / size) * cols);
        const r = Math.floor((ev.offsetY / size) * rows);
        if (r >= 0 && r < rows && c >= 0 && c < cols) onHover(r, c, values[r][c]);
        else onHover(null);
      });
      el.addEventListener("mouseleave", () => onHover(null));
    }
    return el;
  }

  // The colour scale of a heatmap: the map's gradient from lo to hi, with both ends written.
  function colourScale(map, lo, hi, width = 150, label = "") {
    const [el, ctx] = canvas(width, 10, { lo, hi });
    for (let x = 0; x < width; x++) {
      ctx.fillStyle = css(map(x / (width - 1)));
      ctx.fillRect(x, 0, 1.5, 10);
    }
    return keyRow(el, `${label}${short(lo)}`, short(hi));
  }

  function keyRow(bar, left, right) {
    const row = document.createElement("div");
    row.className = "colour-scale";
    const a = document.createElement("span");
    a.textContent = left;
    const b = document.createElement("span");
    b.textContent = right;
    row.append(a, bar, b);
    return row;
  }

  // How to colour a grid of signed values: white at zero, blue below, red above, over [-m, m]
  // (m the largest magnitude); or white to red over [0, max] when no value is negative (ReLU
  // activations). {lo, hi, map}.
  function signedScale(values) {
    let lo = Infinity, hi = -Infinity;
    for (const row of values) for (const v of row) { if (v < lo) lo = v; if (v > hi) hi = v; }
    if (!Number.isFinite(lo)) return { lo: 0, hi: 1, map: positive };
    if (lo >= 0) return { lo: 0, hi: hi > 0 ? hi : 1, map: positive };
    const m = Math.max(Math.abs(lo), Math.abs(hi));
    return { lo: -m, hi: m, map: diverging };
  }

  return { sequential, diverging, positive, css, luminance, textOn, hue, canvas, clock, hueKey,
           frequencyColour, neuronBars, frequencyLegend, heatmap, colourScale, signedScale, short };
})();

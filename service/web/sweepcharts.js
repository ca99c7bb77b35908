// The sweep page's pictures of its members: their accuracy curves overlaid, coloured by the
// value of one axis (uPlot, with its legend and values under the pointer), and the median steps
// to memorise and to generalise against one axis, with the spread over the other axes' values
// (Power et al. 2022, Fig. 1, for a train-fraction sweep), on a canvas with a log step axis.
"use strict";

const SweepCharts = (() => {
  const MEMORISE = "#9333ea";
  const GENERALISE = "#16a34a";
  const key = (v) => JSON.stringify(v);
  const label = (v) => (typeof v === "string" ? v : JSON.stringify(v));
  const shortAxis = (axis) => axis.split(".").pop();

  // An axis's values in grid order; numbers in increasing order.
  function axisValues(grid, axis) {
    const values = grid[axis] || [];
    return values.every((v) => typeof v === "number") ? [...values].sort((a, b) => a - b) : values;
  }

  function faded(hex, alpha) {
    const n = parseInt(hex.slice(1), 16);
    return `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
  }

  // els: {val_acc, train_acc} chart elements; metrics: experiment id -> its metrics JSON;
  // highlighted: the experiment ids to draw strong (the others faded), or null for all.
  function curves(els, members, metrics, grid, axis, highlighted, legendEl) {
    const values = axisValues(grid, axis);
    const colourOf = (m) => Charts.color(Math.max(0, values.findIndex((v) => key(v) === key(m.point[axis]))));
    for (const [name, el] of Object.entries(els)) {
      const series = [];
      for (const m of members) {
        const s = metrics.has(m.experiment_id) && metrics.get(m.experiment_id).series.find((x) => x.name === name);
        if (!s) continue;
        const on = !highlighted || highlighted.has(m.experiment_id);
        series.push({ label: `#${m.index} ${shortAxis(axis)}=${label(m.point[axis])}`, steps: s.steps, values: s.values,
                      color: on ? colourOf(m) : faded(colourOf(m), 0.16), width: highlighted && on ? 2.5 : 1.5 });
      }
      // The picked-out members drawn last, over the faded others.
      series.sort((a, b) => (a.width > 2) - (b.width > 2));
      Charts.line(el, { series, yLabel: name });
      el.dataset.highlighted = highlighted ? String(series.filter((s) => s.width > 2).length) : "0";
    }
    put(legendEl, h("span", { class: "note" }, `colour: ${axis}`), values.map((v, i) => h("span", { class: "legend-item" },
      h("span", { class: "swatch", style: `background:${Charts.color(i)}` }), label(v))),
    highlighted ? h("span", { class: "note" }, `${highlighted.size} highlighted (click the cell again to clear)`) : null);
  }

  function stats(steps) {
    const s = [...steps].sort((a, b) => a - b);
    if (!s.length) return null;
    const at = (q) => { const x = q * (s.length - 1), i = Math.floor(x); return s[i] + (s[Math.min(i + 1, s.length - 1)] - s[i]) * (x - i); };
    return { median: at(0.5), min: s[0], max: s[s.length - 1], n: s.length };
  }

  // Per value of the axis: the memorisation and generalisation steps' median and range over the
  // members that reached them, and how many finished members never did.
  function stepsByValue(members, grid, axis) {
    return axisValues(grid, axis).map((value) => {
      const ms = members.filter((m) => key(m.point[axis]) === key(value));
      const side = (field) => ({
        ...stats(ms.map((m) => m[field]).filter((x) => x !== null && x !== undefined)),
        never: ms.filter((m) => m.status === "succeeded" && (m[field] === null || m[field] === undefined)).length,
      });
      return { value, members: ms.length, pending: ms.filter((m) => !FINISHED.includes(m.status)).length,
               memorise: side("memorization_step"), generalise: side("generalization_step") };
    });
  }
  const FINISHED = ["succeeded", "failed", "cancelled", "pruned"];

  // The plot of stepsByValue: x the axis's values (evenly spaced), y the steps (log); members
  // that never got there as a hollow triangle in the "never" row at the top, with their count.
  function medians(el, rows, axis, onHover) {
    const width = Math.max(360, Math.min(900, (el.clientWidth || 604) - 4));
    const height = 300;
    const box = { left: 58, right: width - 16, top: 44, bottom: height - 44 };
    const neverY = 18;
    const reached = rows.flatMap((r) => [r.memorise, r.generalise]).filter((s) => s.n);
    const counts = { memorise: 0, generalise: 0, never: 0 };
    const [canvas, ctx] = Pictures.canvas(width, height);
    let lo = Math.min(...reached.map((s) => s.min), Infinity), hi = Math.max(...reached.map((s) => s.max), -Infinity);
    if (!Number.isFinite(lo)) { lo = 10; hi = 1000; }
    lo = Math.max(1, lo / 1.6);
    hi = Math.max(hi * 1.6, lo * 10);
    const y = (v) => box.bottom - ((Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * (box.bottom - box.top);
    const band = (box.right - box.left) / Math.max(1, rows.length);
    const x = (i) => box.left + (i + 0.5) * band;

    ctx.strokeStyle = "#e2e8f0";
    ctx.fillStyle = "#64748b";
    ctx.textAlign = "right";
    const decades = Math.log10(hi / lo);
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
      for (const m of decades > 2.5 ? [1] : [1, 2, 5]) {
        const v = m * 10 ** e;
        if (v < lo || v > hi) continue;
        ctx.beginPath(); ctx.moveTo(box.left, y(v)); ctx.lineTo(box.right, y(v)); ctx.stroke();
        ctx.fillText(v >= 1e5 ? v.toExponential(0) : String(v), box.left - 6, y(v) + 4);
      }
    }
    ctx.fillText("never", box.left - 6, neverY + 4);
    ctx.setLineDash([2, 3]);
    ctx.beginPath(); ctx.moveTo(box.left, neverY + 12); ctx.lineTo(box.right, neverY + 12); ctx.stroke();
    ctx.setLineDash([]);
    Charts.yTitle(ctx, "steps (log)", 14, box);
    ctx.textAlign = "center";
    rows.forEach((r, i) => ctx.fillText(label(r.value), x(i), box.bottom + 16));
    ctx.fillText(axis, (box.left + box.right) / 2, height - 8);

    const sides = [["memorise", MEMORISE, -7], ["generalise", GENERALISE, 7]];
    for (const [side, colour, dx] of sides) {
      ctx.strokeStyle = colour;
      ctx.fillStyle = colour;
      ctx.lineWidth = 1.5;
      ctx.beginPath(); // the medians joined across the axis's values
      let drawing = false;
      rows.forEach((r, i) => {
        const s = r[side];
        if (!s.n) { drawing = false; return; }
        if (drawing) ctx.lineTo(x(i) + dx, y(s.median)); else ctx.moveTo(x(i) + dx, y(s.median));
        drawing = true;
      });
      ctx.globalAlpha = 0.45;
      ctx.stroke();
      ctx.globalAlpha = 1;
      rows.forEach((r, i) => {
        const s = r[side];
        const cx = x(i) + dx;
        if (s.n) {
          ctx.beginPath(); // min-max whisker with caps
          ctx.moveTo(cx, y(s.min)); ctx.lineTo(cx, y(s.max));
          ctx.moveTo(cx - 4, y(s.min)); ctx.lineTo(cx + 4, y(s.min));
          ctx.moveTo(cx - 4, y(s.max)); ctx.lineTo(cx + 4, y(s.max));
          ctx.stroke();
          marker(ctx, side, cx, y(s.median), true);
        }
        if (s.never) {
          marker(ctx, "never", cx, neverY, false);
          ctx.fillText(`${s.never}`, cx + (dx < 0 ? -9 : 9), neverY - 8);
          counts.never += side === "generalise" ? s.never : 0;
        }
        if (s.n || s.never) counts[side] += 1;
      });
    }
    const drawn = { values: rows.length, memorisePoints: counts.memorise,
                    generalisePoints: counts.generalise, never: counts.never };
    Object.assign(canvas.dataset, drawn);
    canvas.addEventListener("mousemove", (ev) => {
      const i = Math.floor((ev.offsetX - box.left) / band);
      onHover(i >= 0 && i < rows.length ? rows[i] : null);
    });
    canvas.addEventListener("mouseleave", () => onHover(null));
    put(el, canvas, h("div", { class: "legend" },
      h("span", { class: "legend-item" }, h("span", { class: "swatch", style: `background:${MEMORISE};border-radius:50%` }), "memorised: train acc ≥ 0.99 (median, whisker min–max)"),
      h("span", { class: "legend-item" }, h("span", { class: "swatch", style: `background:${GENERALISE};transform:rotate(45deg) scale(0.8)` }), "generalised: val acc ≥ 0.99"),
      h("span", { class: "legend-item" }, "△ in the top row: finished members that never got there (count above)")));
    Object.assign(el.dataset, drawn);
    return counts;
  }

  function marker(ctx, kind, x, y, filled) {
    ctx.beginPath();
    if (kind === "memorise") ctx.arc(x, y, 4.5, 0, 2 * Math.PI);
    else if (kind === "generalise") { ctx.moveTo(x, y - 6); ctx.lineTo(x + 6, y); ctx.lineTo(x, y + 6); ctx.lineTo(x - 6, y); ctx.closePath(); }
    else { ctx.moveTo(x, y - 6); ctx.lineTo(x + 6, y + 5); ctx.lineTo(x - 6, y + 5); ctx.closePath(); }
    if (filled) ctx.fill(); else ctx.stroke();
  }

  // What the pointer is over in the median plot, in words.
  function describe(r, axis) {
    if (!r) return "\u00a0";
    const side = (s, verb) => (s.n ? `${verb} median ${Math.round(s.median)} (${s.min}–${s.max}, ${s.n})` : `none ${verb}`) +
      (s.never ? `, ${s.never} never` : "");
    return `${axis} = ${label(r.value)} (${r.members} members${r.pending ? `, ${r.pending} unfinished` : ""}): ` +
      `${side(r.memorise, "memorised")}; ${side(r.generalise, "generalised")}`;
  }

  return { curves, stepsByValue, medians, describe, axisValues, key };
})();

// The job page's two pictures, drawn as inline SVG in the style of core/plot.py's pruning.svg:
// calibration PPL after each step, and the layer x block map of what was removed.

import { el, fmtPpl, svg } from "./dom.js";

const ACCENT = "#d9480f";
const MUTED = "#adb5bd";
const EMPTY = "#f1f3f5";

function frame(width, height, label) {
  return svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    width: "100%",
    role: "img",
    "aria-label": label,
    "font-family": "sans-serif",
    "font-size": "11",
  });
}

// Step 0 is the unpruned model (base_ppl), step i the PPL after the i-th removal. While a search
// runs, `pending` (the best candidate of the running iteration so far) is a hollow point.
export function pplChart(basePpl, removed, totalSteps, pending, ended = false) {
  if (typeof basePpl !== "number") {
    const words = ended
      ? "The job ended before the base model's PPL was measured."
      : "Waiting for the base model's PPL…";
    return el("p", { class: "muted", text: words });
  }
  const ppls = [basePpl, ...removed.map((r) => r.ppl)];
  const W = 420;
  const H = 220;
  const x0 = 56;
  const y0 = 14;
  const w = W - x0 - 14;
  const h = H - y0 - 40;
  const steps = Math.max(1, ppls.length - 1 + (pending ? 1 : 0), totalSteps || 0);
  const values = pending ? [...ppls, pending] : ppls;
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const span = hi - lo || 1;
  const x = (i) => x0 + (w * i) / steps;
  const y = (p) => y0 + h - (h * (p - lo)) / span;

  const chart = frame(W, H, "calibration perplexity after each removal step");
  chart.append(
    svg("line", { x1: x0, y1: y0 + h, x2: x0 + w, y2: y0 + h, stroke: MUTED }),
    svg("line", { x1: x0, y1: y0, x2: x0, y2: y0 + h, stroke: MUTED }),
    svg("text", { x: x0 - 4, y: y0 + 4, "text-anchor": "end", text: fmtPpl(hi) }),
    svg("text", { x: x0 - 4, y: y0 + h, "text-anchor": "end", text: fmtPpl(lo) }),
    svg("text", {
      x: x0 + w / 2,
      y: H - 6,
      "text-anchor": "middle",
      text: "blocks removed",
    }),
  );
  const every = Math.ceil((steps + 1) / 16);
  for (let i = 0; i <= steps; i += every) {
    chart.append(svg("text", { x: x(i), y: y0 + h + 14, "text-anchor": "middle", text: i }));
  }
  const points = ppls.map((p, i) => `${x(i).toFixed(1)},${y(p).toFixed(1)}`).join(" ");
  chart.append(
    svg("polyline", { points, fill: "none", stroke: ACCENT, "stroke-width": 2, class: "curve" }),
  );
  ppls.forEach((p, i) => {
    const what = i === 0 ? "unpruned" : `${removed[i - 1].block}.${removed[i - 1].layer} removed`;
    chart.append(
      svg(
        "circle",
        { cx: x(i).toFixed(1), cy: y(p).toFixed(1), r: 3.5, fill: ACCENT, class: "point" },
        svg("title", { text: `step ${i} (${what}): PPL ${fmtPpl(p)}` }),
      ),
    );
  });
  if (pending) {
    const i = ppls.length;
    chart.append(
      svg("line", {
        x1: x(i - 1),
        y1: y(ppls[i - 1]),
        x2: x(i),
        y2: y(pending),
        stroke: ACCENT,
        "stroke-dasharray": "3 3",
      }),
      svg(
        "circle",
        { cx: x(i), cy: y(pending), r: 3.5, fill: "white", stroke: ACCENT, class: "pending" },
        svg("title", { text: `step ${i}, running: best candidate so far ${fmtPpl(pending)}` }),
      ),
    );
  }
  return chart;
}

// Two rows (mha, mlp), one column per layer; a removed block is filled and labelled with the
// step that removed it. The API does not give the model's layer count: `layers` is what the
// page has seen (the highest layer named by the job, plus one).
export function layerMap(removed, layers, ended = false) {
  if (!removed.length && (ended || layers < 1)) {
    return el("p", { class: "muted", text: ended ? "Nothing was removed." : "Nothing removed yet." });
  }
  const stepOf = new Map(removed.map((r, n) => [`${r.block}.${r.layer}`, n + 1]));
  const W = 420;
  const x0 = 40;
  const cell = Math.max(4, Math.min(28, (W - x0 - 8) / layers));
  const H = 14 + 2 * (cell + 6) + 34;
  const map = frame(W, H, "removed blocks by layer");
  ["mha", "mlp"].forEach((kind, row) => {
    const y = 8 + row * (cell + 6);
    map.append(svg("text", { x: x0 - 6, y: y + cell / 2 + 4, "text-anchor": "end", text: kind }));
    for (let layer = 0; layer < layers; layer += 1) {
      const step = stepOf.get(`${kind}.${layer}`);
      const cx = x0 + layer * cell;
      const tip = `${kind}.${layer}` + (step ? ` removed at step ${step}` : "");
      map.append(
        svg(
          "rect",
          {
            x: cx.toFixed(1),
            y,
            width: Math.max(1, cell - 2).toFixed(1),
            height: cell,
            fill: step ? ACCENT : EMPTY,
            class: step ? "cell removed" : "cell",
            "data-block": kind,
            "data-layer": layer,
            "data-step": step || null,
          },
          svg("title", { text: tip }),
        ),
      );
      if (step && cell >= 14) {
        map.append(
          svg("text", {
            x: (cx + (cell - 2) / 2).toFixed(1),
            y: y + cell / 2 + 4,
            fill: "white",
            "text-anchor": "middle",
            "font-size": 10,
            class: "step",
            text: step,
          }),
        );
      }
    }
  });
  const axis = 8 + 2 * (cell + 6) + 10;
  const every = layers <= 16 ? 1 : 5;
  for (let layer = 0; layer < layers; layer += every) {
    const lx = x0 + layer * cell + cell / 2;
    map.append(svg("text", { x: lx.toFixed(1), y: axis, "text-anchor": "middle", text: layer }));
  }
  map.append(svg("text", { x: x0, y: axis + 16, text: "layer" }));
  return map;
}

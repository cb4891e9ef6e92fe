// Charts: GET /api/v1/series drawn live as lines, one per group, the busiest first.

import { FILTER_KEYS, PALETTE, fmtNum, getJSON, h, pick } from "./api.js";
import { LineChart } from "./linechart.js";

// What to chart for the kinds we know: a stream on the overview opens with these.
const KIND_PRESETS = {
  syscall: { field: "count", agg: "sum", group_by: "syscall" },
};

export default {
  id: "charts",
  title: "Charts",
  fields: ["field", "agg", "bucket", "group_by", "domain", "kind", "host", "pid", "comm", "label", "from", "to",
           { name: "top", label: "top series", inputmode: "numeric", size: "s" },
           { name: "scale", options: ["linear", "log"], size: "s" }],
  defaults: { field: "count", agg: "sum", bucket: "10", from: "-15m", top: "8", scale: "linear" },

  mount(ctx) {
    const panel = ctx.body.appendChild(h("div", { class: "panel" }));
    ctx.state.chart = new LineChart(panel);
    ctx.state.legend = ctx.body.appendChild(h("div", { class: "legend", id: "legend" }));
  },

  async load(params, ctx) {
    const rows = await getJSON("api/v1/series",
      pick(params, [...FILTER_KEYS, "field", "agg", "bucket", "group_by"]));
    // A sum or count over a bucket that is still filling would dip at the right edge: leave it out.
    const bucketMs = (parseFloat(params.bucket) || 60) * 1000;
    const partial = ["sum", "count"].includes(params.agg) ? Date.now() - bucketMs : Infinity;
    const groups = new Map();
    for (const r of rows) {
      if (r.time > partial) continue;
      const name = r.group ?? (params.group_by ? "(none)" : params.field);
      if (!groups.has(name)) groups.set(name, []);
      groups.get(name).push([r.time, r.value]);
    }
    const top = Math.max(1, parseInt(params.top, 10) || 8);
    const ranked = [...groups.entries()]
      .map(([name, points]) => ({ name, points, total: points.reduce((a, p) => a + p[1], 0) }))
      .sort((a, b) => b.total - a.total);
    const shown = ranked.slice(0, top).map((s, i) => ({ ...s, color: PALETTE[i % PALETTE.length] }));
    ctx.state.chart.set(shown, bucketMs, { log: params.scale === "log" });

    const items = shown.map((s) => h("span", { class: "item", "data-series": s.name },
      h("span", { class: "sw", style: { background: s.color } }), h("span", null, s.name),
      h("span", { class: "num", title: "latest bucket · sum over the window" },
        `${fmtNum(s.points[s.points.length - 1][1])} · Σ ${fmtNum(s.total)}`)));
    if (ranked.length > top) items.push(h("span", { class: "num" }, `+${ranked.length - top} more series`));
    if (!rows.length) items.push(h("span", { class: "num" }, "no data: check field, kind and the time range"));
    ctx.state.legend.replaceChildren(...items);
    return `${groups.size} series, ${rows.length} points of ${params.agg}(${params.field}) per ${params.bucket} s`;
  },

  links(s) {
    const preset = KIND_PRESETS[s.kind];
    if (!preset) return [];
    return [{ text: "chart", params: { ...preset, host: s.host, domain: s.domain, kind: s.kind } }];
  },
};

// Timeline: the states of threads (or any series) over time, from GET /api/v1/timeline.
// One lane per series; a coloured segment per state; hover for the times.

import { FILTER_KEYS, fmtClock, fmtDuration, fmtTime, getJSON, h, hashHue, pick, tooltip } from "./api.js";

const STATE_COLORS = {
  running: "#3fb950", runnable: "#d29922", sleeping: "#4c8dff", waiting: "#4c8dff", idle: "#9aa5b1",
  blocked: "#e5534b", disk: "#e5534b", "disk-sleep": "#e5534b", io: "#f2994a", stopped: "#a371f7",
  zombie: "#8b949e", dead: "#6e7681",
};

const stateColor = (s) => STATE_COLORS[s] || `hsl(${hashHue(s)}, 55%, 62%)`;

// Dense rows -> per series [{start, end, state, open}]; the last state runs to viewEnd.
function segments(rows, names, viewEnd) {
  const out = new Map(names.map((n) => [n, []]));
  for (const name of names) {
    let cur = null;
    for (const row of rows) {
      const state = row[name];
      if (cur && cur.state === state) continue;
      if (cur) { cur.end = row.time; out.get(name).push(cur); }
      cur = state == null ? null : { start: row.time, state };
    }
    if (cur) { cur.end = viewEnd; cur.open = true; out.get(name).push(cur); }
  }
  return out;
}

export default {
  id: "timeline",
  title: "Timeline",
  fields: ["domain", "kind", "host", "pid", "comm", "label", "from", "to",
           { name: "series", placeholder: "comm:tid", title: "record fields or label keys joined by ':'" },
           { name: "state", placeholder: "state", title: "the label that holds the state" },
           "limit", { name: "max_series", label: "max series", inputmode: "numeric", size: "s" }],
  defaults: { domain: "proc", kind: "thread_state", from: "-15m", series: "comm:tid", state: "state",
              limit: "5000", max_series: "50" },

  async load(params, ctx) {
    const rows = await getJSON("api/v1/timeline",
      pick(params, [...FILTER_KEYS, "series", "state", "limit", "max_series"]));
    if (!rows.length) {
      ctx.body.replaceChildren(h("div", { class: "panel" }, h("p", { class: "empty" },
        "no state records match: the proc exporter sends kind thread_state with a state label")));
      return "no states";
    }
    const names = Object.keys(rows[0]).filter((k) => k !== "time");
    const t0 = rows[0].time;
    const last = rows[rows.length - 1].time;
    const viewEnd = last + Math.max((last - t0) * 0.04, 1);
    const span = viewEnd - t0;
    const pos = (t) => `${(((t - t0) / span) * 100).toFixed(3)}%`;
    const segs = segments(rows, names, viewEnd);

    const axis = h("div", { class: "axis" });
    for (let i = 0; i <= 6; i++) {
      const t = t0 + (span * i) / 6;
      const shift = i === 0 ? "0" : i === 6 ? "-100%" : "-50%"; // the ends stay inside the lane
      axis.append(h("span", { style: { left: `${(i / 6) * 100}%`, transform: `translateX(${shift})` } },
        fmtClock(t, span < 20000)));
    }
    const totals = new Map();
    const grid = h("div", { class: "tl" }, h("div"), axis);
    for (const name of names) {
      const lane = h("div", { class: "lane" });
      for (const s of segs.get(name)) {
        totals.set(s.state, (totals.get(s.state) || 0) + (s.end - s.start));
        const seg = h("div", {
          class: "seg", style: { left: pos(s.start), width: pos(t0 + (s.end - s.start)), background: stateColor(s.state) },
        }, s.state);
        seg.addEventListener("mousemove", (ev) => tooltip.show([h("b", null, name),
          h("div", { class: "row" }, h("span", null, "state"), h("span", null, s.state)),
          h("div", { class: "row" }, h("span", null, "from"), h("span", null, fmtTime(s.start))),
          h("div", { class: "row" }, h("span", null, s.open ? "still, at least" : "for"),
            h("span", null, fmtDuration((s.open ? last - s.start : s.end - s.start) / 1000)))],
        ev.clientX, ev.clientY));
        seg.addEventListener("mouseleave", () => tooltip.hide());
        lane.append(seg);
      }
      grid.append(h("div", { class: "name", title: name }, name), lane);
    }
    const legend = h("div", { class: "legend" }, [...totals.entries()].sort((a, b) => b[1] - a[1]).map(([state, ms]) =>
      h("span", { class: "item" }, h("span", { class: "sw", style: { background: stateColor(state) } }),
        h("span", null, state), h("span", { class: "num" }, fmtDuration(ms / 1000)))));
    ctx.body.replaceChildren(h("div", { class: "panel" }, grid), legend);
    return `${names.length} series, ${rows.length} changes, ${fmtTime(t0)} – ${fmtClock(last, true)}`;
  },

  links(s) {
    if (s.kind !== "thread_state") return [];
    return [{ text: "timeline", params: { host: s.host, domain: s.domain, kind: s.kind } }];
  },
};

// Flame graph: the stacks of stack records (GET /api/v1/flamegraph?format=tree) merged and drawn,
// with the heaviest frames by self value below.

import { FILTER_KEYS, fmtNum, getJSON, h, pick, table } from "./api.js";
import { FlameGraph } from "./flamegraph.js";

const TOP_FRAMES = 15;

// Per frame name: self summed over every node, total counted once per stack path (a recursive
// function's inner calls are inside its outer call already).
function topFrames(root) {
  const stats = new Map();
  const onPath = new Map();
  const visit = (node) => {
    const s = stats.get(node.name) || { self: 0, total: 0 };
    s.self += node.self;
    if (!onPath.get(node.name)) s.total += node.value;
    stats.set(node.name, s);
    onPath.set(node.name, (onPath.get(node.name) || 0) + 1);
    node.children.forEach(visit);
    onPath.set(node.name, onPath.get(node.name) - 1);
  };
  root.children.forEach(visit);
  return [...stats.entries()].sort((a, b) => b[1].self - a[1].self || b[1].total - a[1].total).slice(0, TOP_FRAMES);
}

export default {
  id: "flame",
  title: "Flame graph",
  fields: ["domain", "kind", "host", "pid", "comm", "label", "from", "to", "field"],
  defaults: { domain: "stack", from: "-15m", field: "count" },

  mount(ctx) {
    const search = h("input", { type: "search", placeholder: "highlight frames…", "aria-label": "search frames" });
    const orient = h("select", { class: "small", "aria-label": "orientation" },
      h("option", { value: "flame" }, "flame"), h("option", { value: "icicle" }, "icicle"));
    const reset = h("button", { type: "button", class: "ghost" }, "reset zoom");
    const summary = h("span", { id: "flame-summary" });
    const panel = h("div", { class: "panel" });
    ctx.state.top = h("div", { class: "scroll" });
    ctx.body.append(h("div", { class: "toolbar" }, search, orient, reset, summary), panel,
      h("h2", null, "Top frames", h("small", null, "by self value")), ctx.state.top);
    const fg = new FlameGraph(panel);
    ctx.state.fg = fg;
    search.addEventListener("input", () => fg.setSearch(search.value));
    orient.addEventListener("change", () => fg.setIcicle(orient.value === "icicle"));
    reset.addEventListener("click", () => fg.resetZoom());
    fg.onChange = () => {
      const zoom = fg.zoom.length ? ` · zoomed into ${fg.zoom[fg.zoom.length - 1]}` : "";
      summary.textContent = `${fg.frames.length} frames shown${zoom} · click a frame to zoom, again to zoom out`;
    };
  },

  async load(params, ctx) {
    const tree = await getJSON("api/v1/flamegraph", { ...pick(params, [...FILTER_KEYS, "field"]), format: "tree" });
    const { fg, top } = ctx.state;
    fg.unit = params.field || "count";
    fg.set(tree);
    const total = tree.value || 1;
    const pct = (v) => `${((100 * v) / total).toFixed(1)} %`;
    top.replaceChildren(table([
      { title: "frame", cls: "mono" }, { title: "self", cls: "num" }, { title: "self %", cls: "num" },
      { title: "total", cls: "num" }, { title: "total %", cls: "num" },
    ], topFrames(tree).map(([name, s]) => [name, fmtNum(s.self), pct(s.self), fmtNum(s.total), pct(s.total)]),
    "no stacks match these filters"));
    return tree.value ? `total ${fmtNum(tree.value)} (${fg.unit})` : "no stacks";
  },

  links(s) {
    if (s.domain !== "stack") return [];
    return [{ text: "flame graph", params: { host: s.host, domain: s.domain, kind: s.kind } }];
  },
};

// Flame graph: the stacks of one kind of stack record (GET /api/v1/flamegraph?format=tree)
// merged and drawn, for a time range and a process, with the heaviest frames by self value below.

import { fmtDuration, fmtNum, fmtSI, getJSON, h, pick, table } from "./api.js";
import { FlameGraph } from "./flamegraph.js";

const TOP_FRAMES = 15;

// Every stack kind `bpfscope stack MODE` sends, what its flame graph is weighted by, and how
// that value reads. alloc_stack is a snapshot (what is outstanding at each read), so it is
// drawn from the newest read in the range (latest), never summed over reads; user-space
// and kernel allocations are the same kind, told apart by the label space.
export const KINDS = [
  { id: "cpu_stack", title: "cpu · on-CPU samples", field: "count", unit: "count" },
  { id: "offcpu_stack", title: "offcpu · off-CPU time", field: "ns", unit: "ns" },
  { id: "alloc_stack", title: "mem · outstanding libc allocations", field: "outstanding_bytes", unit: "bytes",
    label: "space:user", latest: true },
  { id: "alloc_stack:kernel", kind: "alloc_stack", title: "mem --kernel · outstanding kernel allocations",
    field: "outstanding_bytes", unit: "bytes", label: "space:kernel", latest: true },
  { id: "io_stack", title: "io · bytes read and written", field: "bytes", unit: "bytes" },
  { id: "block_stack", title: "block · block-device request time", field: "ns", unit: "ns" },
  { id: "load_stack", title: "load · on-CPU samples under load", field: "count", unit: "count" },
];

// A value of `field` as text: durations for nanoseconds, SI bytes, plain numbers otherwise.
export function formatter(field) {
  if (field === "ns" || field.endsWith("_ns")) return (v) => (v ? fmtDuration(v / 1e9) : "0");
  if (field === "bytes" || field.endsWith("_bytes")) return (v) => (v ? `${fmtSI(v)}B` : "0");
  return (v) => fmtNum(v);
}

// The query of the page's form values: the kind's own label and weight unless overridden.
function query(params) {
  const spec = KINDS.find((k) => k.id === params.kind) || { id: params.kind, field: "count" };
  const labels = [spec.label, params.label].filter(Boolean).join(",");
  const field = params.field || spec.field;
  const q = { ...pick(params, ["host", "pid", "comm", "from", "to"]), domain: "stack",
              kind: spec.kind || spec.id || "", label: labels, field, format: "tree" };
  if (spec.latest) q.latest = "true";
  return { q, spec, field };
}

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
  fields: [
    { name: "kind", options: KINDS.map((k) => [k.id, k.title]), title: "which stacks: one kind per exporter mode" },
    "host", "pid", "comm", "label", "from", "to",
    { name: "field", placeholder: "auto", title: "weight: a key of values (default: the kind's own)" },
  ],
  defaults: { kind: "cpu_stack", from: "-15m" },

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
    const { q, spec, field } = query(params);
    const tree = await getJSON("api/v1/flamegraph", q);
    const { fg, top } = ctx.state;
    const fmt = formatter(field);
    fg.unit = field;
    fg.format = fmt;
    fg.set(tree);
    const total = tree.value || 1;
    const pct = (v) => `${((100 * v) / total).toFixed(1)} %`;
    top.replaceChildren(table([
      { title: "frame", cls: "mono" }, { title: "self", cls: "num" }, { title: "self %", cls: "num" },
      { title: "total", cls: "num" }, { title: "total %", cls: "num" },
    ], topFrames(tree).map(([name, s]) => [name, fmt(s.self), pct(s.self), fmt(s.total), pct(s.total)]),
    "no stacks match these filters"));
    const what = spec.latest ? " outstanding at the newest read" : "";
    return tree.value ? `total ${fmt(tree.value)} (${field})${what} · ${q.kind}` : `no ${q.kind} stacks`;
  },

  links(s) {
    if (s.domain !== "stack") return [];
    return [{ text: "flame graph", params: { host: s.host, kind: s.kind } }];
  },
};

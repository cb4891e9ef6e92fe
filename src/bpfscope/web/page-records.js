// Records explorer: the filters of GET /api/v1/records, the newest records in a table.

import { FILTER_KEYS, fmtNum, fmtTime, getJSON, h, pick, table } from "./api.js";

function chips(obj, numbers) {
  return Object.entries(obj || {}).map(([k, v]) =>
    h("span", { class: "chip" }, h("i", null, k), numbers ? fmtNum(v) : String(v)));
}

// Which stacks the user opened, so that the auto-refresh does not fold them again.
const opened = new Set();

function stackCell(r) {
  const stack = r.stack;
  if (!stack || !stack.length) return "";
  const key = `${r.ts}/${r.host}/${r.pid}/${r.tid}/${stack.length}/${stack[stack.length - 1]}`;
  return h("details", {
    class: "stack", open: opened.has(key),
    ontoggle: (ev) => (ev.target.open ? opened.add(key) : opened.delete(key)),
  },
    h("summary", null, `${stack[stack.length - 1]} (${stack.length})`),
    h("ol", null, stack.map((f) => h("li", null, f))));
}

export default {
  id: "records",
  title: "Records",
  fields: ["domain", "kind", "host", "pid", "comm", "label", "from", "to", "limit", "order"],
  defaults: { from: "-15m", limit: "200", order: "desc" },

  async load(params, ctx) {
    const records = await getJSON("api/v1/records", pick(params, [...FILTER_KEYS, "limit", "order"]));
    const rows = records.map((r) => [
      fmtTime(r.time), r.host, r.domain, r.kind, r.pid ?? "", r.tid ?? "", r.comm ?? "",
      chips(r.labels, false), chips(r.values, true), stackCell(r),
    ]);
    ctx.body.replaceChildren(h("div", { class: "scroll" }, table([
      { title: "time", cls: "mono" }, { title: "host" }, { title: "domain" }, { title: "kind" },
      { title: "pid", cls: "num" }, { title: "tid", cls: "num" }, { title: "comm" },
      { title: "labels", cls: "wrap" }, { title: "values", cls: "wrap" }, { title: "stack" },
    ], rows, "no records match these filters")));
    return `${records.length} records`;
  },

  links(s) {
    return [{ text: "records", params: { host: s.host, domain: s.domain, kind: s.kind } }];
  },
};

// FUSE (fuse trace exporter, kind fuse_op): one record per interval, mount and opcode.
// Summed over the range per mount and opcode: requests, errors, bytes; latency as the
// request-weighted mean and the worst interval's p99 (a log2 bucket's upper bound), and the
// distribution: the records' log2 latency slots (values hist_<i>: requests in [2^i, 2^(i+1)) ns)
// summed per mount and opcode.

import { fmtNum, fmtSI, getJSON, h, pick, table } from "./api.js";

function aggregate(records) {
  const rows = new Map();
  for (const r of records) {
    const key = `${r.host}\u0000${r.labels.mount}\u0000${r.labels.opcode}`;
    let a = rows.get(key);
    if (!a) {
      a = { host: r.host, mount: r.labels.mount || "", opcode: r.labels.opcode || "", count: 0, errors: 0,
        reqBytes: 0, replyBytes: 0, totalUs: 0, p99Us: 0, hist: new Map() };
      rows.set(key, a);
    }
    const v = r.values;
    a.count += v.count || 0;
    a.errors += v.errors || 0;
    a.reqBytes += v.request_bytes || 0;
    a.replyBytes += v.reply_bytes || 0;
    a.totalUs += (v.avg_us || 0) * (v.count || 0);
    a.p99Us = Math.max(a.p99Us, v.p99_us || 0);
    for (const [k, n] of Object.entries(v)) {
      if (k.startsWith("hist_") && typeof n === "number") {
        const slot = Number(k.slice(5));
        a.hist.set(slot, (a.hist.get(slot) || 0) + n);
      }
    }
  }
  return [...rows.values()];
}

function mountTotals(rows) {
  const out = new Map();
  for (const a of rows) {
    const key = `${a.host}\u0000${a.mount}`;
    const t = out.get(key) || { host: a.host, mount: a.mount, count: 0, errors: 0, bytes: 0, opcodes: 0 };
    t.count += a.count;
    t.errors += a.errors;
    t.bytes += a.reqBytes + a.replyBytes;
    t.opcodes += 1;
    out.set(key, t);
  }
  return [...out.values()].sort((a, b) => b.count - a.count);
}

const us = (v) => fmtNum(Math.round(v * 10) / 10);

// A slot's upper bound, 2^(i+1) ns, as a column title.
function bound(slot) {
  const ns = 2 ** (slot + 1);
  for (const [div, unit] of [[1e9, "s"], [1e6, "ms"], [1e3, "µs"]]) {
    if (ns >= div) return `< ${+(ns / div).toPrecision(3)} ${unit}`;
  }
  return `< ${ns} ns`;
}

// The grid's headers are upper-cased by the stylesheet, which turns "µs" into "ΜS" (read: MS).
function keepUnits(grid) {
  for (const th of grid.querySelectorAll("th")) if (th.textContent.includes("µ")) th.style.textTransform = "none";
  return grid;
}

// One row per mount and opcode, one column per log2 slot that any row counted (the range
// between the lowest and the highest, so the columns read as an axis); a cell's shade is its
// share of the row's requests.
function distribution(rows) {
  const slots = rows.flatMap((a) => [...a.hist.keys()]);
  if (!slots.length) return h("p", { class: "empty" }, "no latency histograms in this range (records of an "
    + "older `bpfscope fuse trace` carry none)");
  const lo = Math.min(...slots), hi = Math.max(...slots);
  const range = Array.from({ length: hi - lo + 1 }, (_, i) => lo + i);
  return keepUnits(table([
    { title: "mount", cls: "mono" }, { title: "opcode" }, { title: "requests", cls: "num" },
    ...range.map((s) => ({ title: bound(s), cls: "num" })),
  ], rows.filter((a) => a.hist.size).map((a) => {
    const total = [...a.hist.values()].reduce((x, y) => x + y, 0);
    return [a.mount, a.opcode, fmtNum(total), ...range.map((s) => {
      const n = a.hist.get(s) || 0;
      if (!n) return "";
      const share = n / total;
      return h("span", {
        class: "hist", title: `${fmtNum(n)} of ${fmtNum(total)} (${(share * 100).toFixed(1)}%) took ${bound(s)}`,
        style: { background: `rgba(230, 120, 20, ${(0.1 + 0.9 * share).toFixed(2)})`, padding: "0 4px" },
      }, fmtNum(n));
    })];
  })));
}

export default {
  id: "fuse",
  title: "FUSE",
  fields: ["host", { name: "mount", placeholder: "/mnt/data", title: "one mount point" }, "from", "limit"],
  defaults: { from: "-15m", limit: "10000" },

  async load(params, ctx) {
    const filters = pick(params, ["host", "from", "limit"]);
    // The mount is matched here, not as a label filter: a path may hold spaces or commas.
    const records = (await getJSON("api/v1/records", { ...filters, domain: "fuse", kind: "fuse_op" }))
      .filter((r) => !params.mount || r.labels.mount === params.mount);
    const rows = aggregate(records).sort((a, b) => b.count - a.count);
    const totals = mountTotals(rows);
    const num = (title) => ({ title, cls: "num" });
    ctx.body.replaceChildren(
      h("h2", null, "Mounts"),
      h("div", { class: "scroll" }, table([
        { title: "host" }, { title: "mount", cls: "mono" }, num("requests"), num("errors"), num("bytes"),
        num("opcodes"),
      ], totals.map((t) => [t.host, t.mount, fmtNum(t.count), fmtNum(t.errors), `${fmtSI(t.bytes)}B`, t.opcodes]),
      "no FUSE requests in this range (is `bpfscope fuse trace` sending here?)")),
      h("h2", null, "Per mount and opcode"),
      h("div", { class: "scroll" }, keepUnits(table([
        { title: "mount", cls: "mono" }, { title: "opcode" }, num("requests"), num("errors"), num("request bytes"),
        num("reply bytes"), num("avg µs"), num("p99 µs ≤"),
      ], rows.map((a) => [a.mount, a.opcode, fmtNum(a.count), fmtNum(a.errors), fmtNum(a.reqBytes),
        fmtNum(a.replyBytes), us(a.count ? a.totalUs / a.count : 0), us(a.p99Us)]),
      "no FUSE requests in this range"))),
      h("h2", null, "Latency distribution per mount and opcode (requests per log2 bucket, kernel send to end)"),
      h("div", { class: "scroll" }, distribution(rows)));
    const n = (k, word) => `${k} ${word}${k === 1 ? "" : "s"}`;
    return `${n(totals.length, "mount")}, ${n(rows.length, "mount and opcode row")}`;
  },

  links(s) {
    return s.domain === "fuse" ? [{ text: "FUSE requests", params: { host: s.host } }] : [];
  },
};

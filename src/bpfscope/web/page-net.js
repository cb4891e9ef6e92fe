// Connections: the newest snapshot row of every TCP connection (net exporter, kind
// tcp_conn), one row per connection id, busiest first; and the latest closes (tcp_close).

import { fmtNum, fmtSI, fmtTime, getJSON, h, pick, table } from "./api.js";

const SORTS = {
  rate: (v) => (v.tx_bytes_per_s || 0) + (v.rx_bytes_per_s || 0),
  bytes: (v) => (v.bytes_acked || 0) + (v.bytes_received || 0),
  rtt: (v) => v.srtt_us || 0,
  retrans: (v) => v.total_retrans || 0,
};

function endpoint(addr, port) {
  return addr && addr.includes(":") ? `[${addr}]:${port}` : `${addr}:${port}`;
}

// Records arrive newest first: the first row of each connection id is its latest state.
function latestPerConnection(records) {
  const seen = new Map();
  for (const r of records) {
    const id = r.labels.conn_id || `${r.labels.laddr}:${r.labels.lport}-${r.labels.raddr}:${r.labels.rport}`;
    if (!seen.has(id)) seen.set(id, r);
  }
  return [...seen.values()];
}

export default {
  id: "net",
  title: "Connections",
  fields: ["host", "pid", "comm", { name: "sort", options: Object.keys(SORTS), title: "order of the table" },
    "from", "limit"],
  defaults: { from: "-2m", limit: "5000", sort: "rate" },

  async load(params, ctx) {
    const filters = pick(params, ["host", "pid", "comm", "from", "limit"]);
    const [conns, closes] = await Promise.all([
      getJSON("api/v1/records", { ...filters, domain: "net", kind: "tcp_conn" }),
      getJSON("api/v1/records", { ...filters, domain: "net", kind: "tcp_close", limit: "50" }),
    ]);
    const key = SORTS[params.sort] || SORTS.rate;
    const latest = latestPerConnection(conns).sort((a, b) => key(b.values) - key(a.values));
    const rate = (v) => (v === undefined ? "–" : `${fmtSI(v)}B/s`);
    const rows = latest.map((r) => {
      const v = r.values, l = r.labels;
      return [r.pid ?? "", r.comm ?? "", l.direction || "", endpoint(l.laddr, l.lport), endpoint(l.raddr, l.rport),
        l.state || "", rate(v.tx_bytes_per_s), rate(v.rx_bytes_per_s), fmtSI(v.bytes_acked || 0),
        fmtSI(v.bytes_received || 0), fmtNum((v.srtt_us || 0) / 1000), fmtNum(v.snd_cwnd ?? 0),
        v.snd_ssthresh >= 2147483647 ? "∞" : fmtNum(v.snd_ssthresh ?? 0), fmtNum(v.total_retrans ?? 0)];
    });
    const closeRows = closes.map((r) => [fmtTime(r.time), r.pid ?? "", r.comm ?? "", r.labels.direction || "",
      endpoint(r.labels.laddr, r.labels.lport), endpoint(r.labels.raddr, r.labels.rport),
      fmtSI(r.values.bytes_acked || 0), fmtSI(r.values.bytes_received || 0)]);
    ctx.body.replaceChildren(
      h("div", { class: "scroll" }, table([
        { title: "pid", cls: "num" }, { title: "comm" }, { title: "dir" }, { title: "local", cls: "mono" },
        { title: "remote", cls: "mono" }, { title: "state" }, { title: "tx", cls: "num" }, { title: "rx", cls: "num" },
        { title: "acked", cls: "num" }, { title: "received", cls: "num" }, { title: "rtt ms", cls: "num" },
        { title: "cwnd", cls: "num" }, { title: "ssthresh", cls: "num" }, { title: "retrans", cls: "num" },
      ], rows, "no connections in this range (is `bpfscope net` sending here?)")),
      h("h2", null, "Latest closes"),
      h("div", { class: "scroll" }, table([
        { title: "time", cls: "mono" }, { title: "pid", cls: "num" }, { title: "comm" }, { title: "dir" },
        { title: "local", cls: "mono" }, { title: "remote", cls: "mono" }, { title: "acked", cls: "num" },
        { title: "received", cls: "num" },
      ], closeRows, "no closed connections in this range")));
    return `${latest.length} connections`;
  },

  links(s) {
    return s.domain === "net" ? [{ text: "connections", params: { host: s.host } }] : [];
  },
};

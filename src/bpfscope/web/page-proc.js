// Processes (proc exporter): the system-wide table (kind process, newest interval per
// pid), the portraits' summaries (process_summary: exit code or signal, lifetime, time per
// state), and their lock waits (futex and kernel). The state timeline is the Timeline tab.

import { fmtDuration, fmtNum, fmtSI, getJSON, h, pick, table } from "./api.js";

const sec = (ns) => (ns ? fmtDuration(ns / 1e9) : "0");

// Records arrive newest first: the first one of each key is the latest.
function latestBy(records, key) {
  const seen = new Map();
  for (const r of records) if (!seen.has(key(r))) seen.set(key(r), r);
  return [...seen.values()];
}

function status(r) {
  if (r.labels.signal) return `killed by ${r.labels.signal}${r.values.core_dumped ? " (core)" : ""}`;
  if (r.values.exit_code !== undefined) return `exit ${r.values.exit_code}`;
  return r.labels.status || "";
}

export default {
  id: "proc",
  title: "Processes",
  fields: ["host", "pid", "comm", "from", "limit"],
  defaults: { from: "-15m", limit: "5000" },

  async load(params, ctx) {
    const filters = pick(params, ["host", "pid", "comm", "from", "limit"]);
    const get = (kind, limit) => getJSON("api/v1/records", { ...filters, domain: "proc", kind, ...(limit ? { limit } : {}) });
    const [procs, summaries, futexes, klocks] = await Promise.all([
      get("process"), get("process_summary", "500"), get("futex_wait_summary", "200"), get("lock_wait_summary", "200"),
    ]);
    const top = latestBy(procs, (r) => `${r.host}/${r.pid}`)
      .sort((a, b) => (b.values.cpu_pct || 0) - (a.values.cpu_pct || 0));
    const topRows = top.map((r) => {
      const v = r.values;
      return [r.pid ?? "", r.comm ?? "", fmtNum(v.cpu_pct ?? 0), sec(v.running_ns), sec(v.runnable_ns),
        fmtNum(v.vcsw_per_s ?? 0), fmtNum(v.ivcsw_per_s ?? 0), v.rss_bytes === undefined ? "–" : `${fmtSI(v.rss_bytes)}B`,
        v.threads ?? "", r.labels.state || "", sec((v.lock_wait_ns || 0) + (v.futex_wait_ns || 0))];
    });
    const portraitRows = latestBy(summaries, (r) => `${r.host}/${r.pid}`).map((r) => {
      const v = r.values;
      return [r.pid ?? "", v.parent_pid ?? "", r.comm ?? "", v.exec || "", status(r),
        v.lifetime_ns === undefined ? "–" : sec(v.lifetime_ns), sec(v.running_ns), sec(v.runnable_ns),
        sec(v.sleeping_ns), sec(v.iowait_ns), sec(v.disk_ns), fmtNum(v.vcsw ?? 0), fmtNum(v.ivcsw ?? 0),
        v.threads ?? ""];
    });
    const waitRows = [...futexes, ...klocks].sort((a, b) => b.values.wait_ns - a.values.wait_ns).map((r) => {
      const v = r.values, l = r.labels;
      return [r.pid ?? "", r.tid ?? "", r.comm ?? "", r.kind.startsWith("futex") ? "futex" : "kernel",
        l.symbol || l.addr || "", l.lock_type || "futex", fmtNum(v.count), sec(v.wait_ns), sec(v.max_wait_ns),
        sec(v.avg_wait_ns)];
    });
    const num = (title) => ({ title, cls: "num" });
    ctx.body.replaceChildren(
      h("h2", null, "Every process (newest interval)"),
      h("div", { class: "scroll" }, table([
        num("pid"), { title: "comm" }, num("cpu %"), num("on cpu"), num("run queue"), num("vcsw/s"), num("ivcsw/s"),
        num("rss"), num("threads"), { title: "state" }, num("lock wait"),
      ], topRows, "no process records in this range (is `bpfscope proc` sending here?)")),
      h("h2", null, "Portraits (bpfscope proc --pid / -- COMMAND): per process, whole life"),
      h("div", { class: "scroll" }, table([
        num("pid"), num("parent"), { title: "comm" }, { title: "exec" }, { title: "status" }, num("lifetime"),
        num("running"), num("runnable"), num("sleeping"), num("io wait"), num("disk"), num("vcsw"), num("ivcsw"),
        num("threads"),
      ], portraitRows, "no portraits in this range")),
      h("h2", null, "Lock waits (portraits)"),
      h("div", { class: "scroll" }, table([
        num("pid"), num("tid"), { title: "comm" }, { title: "kind" }, { title: "lock", cls: "mono" },
        { title: "type" }, num("count"), num("total"), num("max"), num("avg"),
      ], waitRows, "no lock waits in this range")));
    return `${top.length} processes, ${portraitRows.length} portraits`;
  },

  links(s) {
    return s.domain === "proc" && s.kind !== "thread_state" ? [{ text: "processes", params: { host: s.host } }] : [];
  },
};

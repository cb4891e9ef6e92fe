// Processes (proc exporter): the system-wide table (kind process, newest interval per
// pid), the portraits' summaries (process_summary: exit code or signal, lifetime, time per
// state), their tree of children and threads (process_summary's parent_pid,
// thread_summary), switch-out reasons (switch_reason_summary), resources over time (the
// per-interval resources samples), lock waits (futex and kernel) and --pthread hold times.
// The state timeline is the Timeline tab.

import { fmtDuration, fmtNum, fmtSI, fmtTime, getJSON, h, pick, table } from "./api.js";

const sec = (ns) => (ns ? fmtDuration(ns / 1e9) : "0");

// Records arrive newest first: the first one of each key is the latest.
function latestBy(records, key) {
  const seen = new Map();
  for (const r of records) if (!seen.has(key(r))) seen.set(key(r), r);
  return [...seen.values()];
}

// The portraits' processes nested under their parents, each with its threads: from the
// newest process_summary per pid and thread_summary per tid.
function processTree(summaries, threadSummaries) {
  const procs = new Map(latestBy(summaries, (r) => `${r.host}/${r.pid}`).map((r) => [`${r.host}/${r.pid}`, r]));
  const threads = new Map();
  for (const t of latestBy(threadSummaries, (r) => `${r.host}/${r.tid}`)) {
    if (t.tid === t.pid || !procs.has(`${t.host}/${t.pid}`)) continue;
    const key = `${t.host}/${t.pid}`;
    if (!threads.has(key)) threads.set(key, []);
    threads.get(key).push(t);
  }
  const children = new Map();
  const roots = [];
  for (const [key, r] of procs) {
    const parent = `${r.host}/${r.values.parent_pid}`;
    if (r.values.parent_pid !== undefined && r.values.parent_pid !== r.pid && procs.has(parent)) {
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(key);
    } else roots.push(key);
  }
  const byPid = (a, b) => procs.get(a).pid - procs.get(b).pid;
  const seen = new Set();  // a pid reused within the range could make a cycle
  const node = (key) => {
    seen.add(key);
    const r = procs.get(key), v = r.values;
    const life = v.lifetime_ns === undefined ? "" : `, lived ${sec(v.lifetime_ns)}`;
    const ths = (threads.get(key) || []).sort((a, b) => a.tid - b.tid).map((t) => h("li", { "data-tid": t.tid },
      `thread ${t.tid} ${t.comm || ""}: ${t.labels.status || ""}, on-CPU ${sec(t.values.running_ns)}`));
    const kids = (children.get(key) || []).filter((k) => !seen.has(k)).sort(byPid).map(node);
    return h("li", { "data-pid": r.pid },
      `${r.pid} ${r.comm || "?"}${v.exec ? ` exec ${v.exec}` : ""}: ${status(r)}${life}, on-CPU ${sec(v.running_ns)}`,
      ths.length || kids.length ? h("ul", null, ths, kids) : null);
  };
  return roots.sort(byPid).map(node);
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
    const [procs, summaries, futexes, klocks, threadSums, reasons, resources, holds] = await Promise.all([
      get("process"), get("process_summary", "500"), get("futex_wait_summary", "200"), get("lock_wait_summary", "200"),
      get("thread_summary", "2000"), get("switch_reason_summary", "500"), get("resources", "500"),
      get("pthread_hold_summary", "200"),
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
    const reasonRows = [...reasons].sort((a, b) => b.values.off_cpu_ns - a.values.off_cpu_ns).map((r) => [
      r.pid ?? "", r.tid ?? "", r.comm ?? "", r.labels.reason || "", r.labels.state || "", r.labels.blocked_on || "",
      fmtNum(r.values.count), sec(r.values.off_cpu_ns)]);
    // newest first, as sampled every interval (a process's rows read as its history)
    const bytes = (b) => (b === undefined ? "–" : `${fmtSI(b)}B`);
    const resourceRows = resources.map((r) => {
      const v = r.values;
      return [fmtTime(r.time), r.pid ?? "", r.comm ?? "", v.cpu_pct === undefined ? "–" : fmtNum(v.cpu_pct),
        bytes(v.rss_bytes), bytes(v.read_bytes), bytes(v.write_bytes)];
    });
    const holdRows = [...holds].sort((a, b) => b.values.hold_ns - a.values.hold_ns).map((r) => {
      const v = r.values;
      return [r.pid ?? "", r.tid ?? "", r.comm ?? "", r.labels.addr || "", r.labels.lock_type || "", fmtNum(v.count),
        sec(v.hold_ns), sec(v.max_hold_ns), sec(v.avg_hold_ns)];
    });
    const tree = processTree(summaries, threadSums);
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
      h("h2", null, "Process tree (portraits): children and threads"),
      tree.length ? h("ul", { class: "proc-tree", style: { fontFamily: "var(--mono)", fontSize: ".8rem" } }, tree)
        : h("p", { class: "empty" }, "no portraits in this range"),
      h("h2", null, "Switch-out reasons (portraits)"),
      h("div", { class: "scroll" }, table([
        num("pid"), num("tid"), { title: "comm" }, { title: "reason" }, { title: "state" },
        { title: "blocked on", cls: "mono" }, num("count"), num("off cpu"),
      ], reasonRows, "no switch-out reasons in this range (bpfscope proc --no-stacks keeps none)")),
      h("h2", null, "Resources over time (portraits, every interval)"),
      h("div", { class: "scroll" }, table([
        { title: "time" }, num("pid"), { title: "comm" }, num("cpu %"), num("rss"), num("read"), num("written"),
      ], resourceRows, "no resource samples in this range")),
      h("h2", null, "Lock waits (portraits)"),
      h("div", { class: "scroll" }, table([
        num("pid"), num("tid"), { title: "comm" }, { title: "kind" }, { title: "lock", cls: "mono" },
        { title: "type" }, num("count"), num("total"), num("max"), num("avg"),
      ], waitRows, "no lock waits in this range")),
      h("h2", null, "pthread lock hold times (portraits with --pthread)"),
      h("div", { class: "scroll" }, table([
        num("pid"), num("tid"), { title: "comm" }, { title: "lock", cls: "mono" }, { title: "type" }, num("holds"),
        num("total"), num("max"), num("avg"),
      ], holdRows, "no pthread holds in this range (bpfscope proc --pthread records them)")));
    return `${top.length} processes, ${portraitRows.length} portraits`;
  },

  links(s) {
    return s.domain === "proc" && s.kind !== "thread_state" ? [{ text: "processes", params: { host: s.host } }] : [];
  },
};

// Overview: the collector's own state and every stream (host, domain, kind) with its record rate.

import { PAGES } from "./pages.js";
import { fmtClock, fmtDuration, fmtNum, fmtTime, getJSON, h, table } from "./api.js";

function card(key, value, sub) {
  return h("div", { class: "card" }, h("div", { class: "k" }, key), h("div", { class: "v" }, value),
    sub ? h("div", { class: "s" }, sub) : null);
}

// Fresh (green) within a few exporter intervals, late (amber) within two minutes, else grey.
function freshness(age) {
  return age <= 30 ? "ok" : age <= 120 ? "warn" : "";
}

export default {
  id: "overview",
  title: "Overview",
  fields: ["from", "host"],
  defaults: { from: "-5m" },

  async load(params, ctx) {
    const o = await getJSON("api/v1/overview", params);
    const c = o.collector;
    const cards = h("div", { class: "cards" },
      card("collector", c.version, `${c.db} · up ${fmtDuration(c.uptime_s)}`),
      card("stored records", fmtNum(c.stored_records), "in the database now"),
      card("ingested", fmtNum(c.records_ingested), `${fmtNum(c.batches_stored)} batches since start`),
      card("rejected", fmtNum(c.records_rejected), `${fmtNum(c.batches_rejected)} batches`),
      card("records / s", fmtNum(o.totals.rate_per_s), `over ${fmtDuration(o.window_s)}`),
      card("hosts · streams", `${o.totals.hosts} · ${o.totals.streams}`, `${fmtNum(o.totals.records)} records`));

    const linkers = PAGES.filter((p) => p.links && p.id !== "overview");
    const rows = o.streams.map((s) => [
      h("span", null, h("span", { class: `dot ${freshness(s.age_s)}`, title: `last record ${fmtDuration(s.age_s)} ago` }), s.host),
      s.exporter, s.domain, s.kind,
      fmtNum(s.records), fmtNum(s.rate_per_s),
      h("span", { title: fmtTime(s.last_seen) }, `${fmtDuration(s.age_s)} ago`),
      h("span", { class: "links" }, linkers.flatMap((p) => (p.links(s) || []).map((l) =>
        h("a", { href: "#", onclick: (ev) => { ev.preventDefault(); ctx.go(p.id, l.params); } }, l.text)))),
    ]);
    const streams = table([
      { title: "host" }, { title: "exporter" }, { title: "domain" }, { title: "kind" },
      { title: "records", cls: "num" }, { title: "rate / s", cls: "num" }, { title: "last seen" }, { title: "open" },
    ], rows, "no records in this window: is an exporter running with --collector?");

    ctx.body.replaceChildren(cards,
      h("h2", null, "Exporters and their streams", h("small", null, `${fmtTime(o.from, false)} – ${fmtClock(o.to)}`)),
      h("div", { class: "scroll" }, streams));
    return `${o.streams.length} streams`;
  },
};

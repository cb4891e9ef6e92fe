// The pages of the built-in UI, in tab order. Adding a domain page is one module and one line:
//
//   // page-net.js
//   export default {
//     id: "net",                      // its address: /#net?host=a&pid=1
//     title: "Connections",           // the tab
//     fields: ["host", "pid", "from"],// filter inputs (names from api.js FIELDS, or {name, ...})
//     defaults: { from: "-15m" },     // values when the address gives none
//     live: true,                     // reload on the auto-refresh tick (default true)
//     mount(ctx) {},                  // optional: build static parts in ctx.body once
//     async load(params, ctx) {},     // fetch with the form values, draw into ctx.body,
//                                     //   return a short status line ("12 connections")
//     links(stream) {},               // optional: [{text, params}] the overview offers for a
//   };                                //   stream {host, domain, kind, ...}, or nothing
//
// and its import below. ctx is {body, page, state: {}, go(id, params)}.

import overview from "./page-overview.js";
import records from "./page-records.js";
import charts from "./page-charts.js";
import flame from "./page-flame.js";
import timeline from "./page-timeline.js";
import net from "./page-net.js";
import proc from "./page-proc.js";
import fuse from "./page-fuse.js";

export const PAGES = [overview, records, charts, flame, timeline, net, proc, fuse];

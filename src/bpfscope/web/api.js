// Shared helpers of the built-in page: fetching, DOM building, formatting, filter fields.
// No framework and no build step: plain ES modules served by the collector under /web/.

export const DOMAINS = ["net", "stack", "proc", "lb", "fuse", "system"];

// Series colours: distinct, readable on the light and the dark theme.
export const PALETTE = ["#4c8dff", "#f2994a", "#3fb950", "#e5534b", "#a371f7",
                        "#39c5cf", "#d29922", "#f778ba", "#8ddb8c", "#9aa5b1"];

// -- HTTP --------------------------------------------------------------------------------------

export async function getJSON(path, params) {
  const url = params ? `${path}?${toQuery(params)}` : path;
  const resp = await fetch(url, { headers: { accept: "application/json" } });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.error || `HTTP ${resp.status}`);
  return body;
}

// {domain: "net", label: "a:b, c:d", pid: ""} -> "domain=net&label=a%3Ab&label=c%3Ad".
// Empty values are left out; label may hold several key:value pairs.
export function toQuery(params) {
  const q = new URLSearchParams();
  for (const [key, raw] of Object.entries(params)) {
    const value = raw == null ? "" : String(raw).trim();
    if (value === "") continue;
    if (key === "label") value.split(/[,\s]+/).filter(Boolean).forEach((v) => q.append(key, v));
    else q.set(key, value);
  }
  return q.toString();
}

// The subset of params named in keys (what one API endpoint understands).
export function pick(params, keys) {
  return Object.fromEntries(keys.filter((k) => k in params).map((k) => [k, params[k]]));
}

export const FILTER_KEYS = ["domain", "kind", "host", "pid", "comm", "label", "from", "to"];

// -- DOM ---------------------------------------------------------------------------------------

// h("td", {class: "num", onclick: f}, "text", child, [more]) -> element.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "style" && typeof value === "object") Object.assign(el.style, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function table(columns, rows, empty = "nothing to show") {
  // columns: [{title, cls}], rows: arrays of cells (text or nodes), same order.
  const head = h("tr", null, columns.map((c) => h("th", { class: c.cls }, c.title)));
  const body = rows.length
    ? rows.map((cells) => h("tr", null, cells.map((cell, i) => h("td", { class: columns[i].cls }, cell))))
    : [h("tr", null, h("td", { class: "empty", colspan: columns.length }, empty))];
  return h("table", { class: "grid" }, h("thead", null, head), h("tbody", null, body));
}

// A floating tooltip shared by the charts: show(html nodes, clientX, clientY), hide().
let tip = null;
export const tooltip = {
  show(content, x, y) {
    if (!tip) tip = document.body.appendChild(h("div", { class: "tooltip", role: "tooltip" }));
    tip.replaceChildren(...[content].flat());
    tip.hidden = false;
    const pad = 14;
    const { width, height } = tip.getBoundingClientRect();
    const left = x + pad + width > window.innerWidth ? x - pad - width : x + pad;
    const top = y + pad + height > window.innerHeight ? y - pad - height : y + pad;
    tip.style.transform = `translate(${Math.max(0, left)}px, ${Math.max(0, top)}px)`;
  },
  hide() { if (tip) tip.hidden = true; },
};

export function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

// -- formatting --------------------------------------------------------------------------------

const intFmt = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const decFmt = new Intl.NumberFormat(undefined, { maximumSignificantDigits: 4 });

export function fmtNum(v) {
  if (typeof v !== "number") return v == null ? "" : String(v);
  return Number.isInteger(v) || Math.abs(v) >= 1000 ? intFmt.format(v) : decFmt.format(v);
}

// 1234567 -> "1.23M": axis labels and tight spots.
export function fmtSI(v) {
  const a = Math.abs(v);
  for (const [div, unit] of [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
    if (a >= div) return `${+(v / div).toPrecision(3)}${unit}`;
  }
  return a === 0 || a >= 1 ? `${+v.toPrecision(3)}` : `${+v.toPrecision(2)}`;
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

export function fmtClock(ms, withMs = false) {
  const d = new Date(ms);
  const t = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return withMs ? `${t}.${pad(d.getMilliseconds(), 3)}` : t;
}

export function fmtTime(ms, withMs = true) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${fmtClock(ms, withMs)}`;
}

export function fmtDuration(seconds) {
  if (seconds < 1e-3) return `${+(seconds * 1e6).toPrecision(3)} µs`;
  if (seconds < 1) return `${+(seconds * 1e3).toPrecision(3)} ms`;
  if (seconds < 120) return `${+seconds.toPrecision(3)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${+(seconds / 3600).toPrecision(3)} h`;
  return `${+(seconds / 86400).toPrecision(3)} d`;
}

// A stable colour for a name (frames, states): a hue from a string hash.
export function hashHue(text) {
  let x = 2166136261;
  for (let i = 0; i < text.length; i++) x = Math.imul(x ^ text.charCodeAt(i), 16777619);
  return (x >>> 0) % 360;
}

// -- filter fields -----------------------------------------------------------------------------

// Every input a page form may show, by parameter name. A page lists the names it wants
// (or passes its own {name, ...} object); the values travel in the URL hash.
export const FIELDS = {
  domain: { options: ["", ...DOMAINS], title: "record domain" },
  kind: { placeholder: "syscall", list: "dl-kind" },
  host: { placeholder: "any", list: "dl-host" },
  pid: { placeholder: "1234", inputmode: "numeric", size: "s" },
  comm: { placeholder: "nginx" },
  label: { placeholder: "key:value, …", title: "label filters, key:value; several separated by commas" },
  from: { placeholder: "-15m", title: "epoch ms, ISO 8601 or relative: -15m, -2h, -1d" },
  to: { placeholder: "now", title: "epoch ms, ISO 8601 or relative: -15m, -2h, -1d" },
  limit: { inputmode: "numeric", size: "s" },
  order: { options: ["desc", "asc"] },
  field: { placeholder: "count", title: "which value to use (a key of values)" },
  agg: { options: ["sum", "avg", "max", "min", "count"] },
  bucket: { label: "bucket (s)", inputmode: "decimal", size: "s" },
  group_by: { label: "group by", placeholder: "label key" },
};

export function buildForm(fields, values, onSubmit) {
  const form = h("form", { class: "filters", autocomplete: "off" });
  for (const item of fields) {
    const spec = typeof item === "string" ? { name: item, ...FIELDS[item] } : item;
    const attrs = { name: spec.name, title: spec.title, class: spec.size === "s" ? "small" : null };
    const input = spec.options
      ? h("select", attrs, spec.options.map((o) => (Array.isArray(o) // [value, text] or a value
        ? h("option", { value: o[0] }, o[1]) : h("option", { value: o }, o === "" ? "any" : o))))
      : h("input", { ...attrs, placeholder: spec.placeholder, inputmode: spec.inputmode, list: spec.list });
    form.append(h("label", null, h("span", null, spec.label || spec.name.replace("_", " ")), input));
  }
  writeForm(form, values);
  form.addEventListener("submit", (ev) => { ev.preventDefault(); onSubmit(readForm(form)); });
  return form;
}

export function readForm(form) {
  const out = {};
  for (const el of form.elements) if (el.name) out[el.name] = el.value.trim();
  return out;
}

export function writeForm(form, values) {
  for (const el of form.elements) if (el.name) el.value = values[el.name] ?? "";
}

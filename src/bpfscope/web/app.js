// The shell of the built-in page: tabs, hash routing (#page?param=value), the filter form of
// each page, auto-refresh, collector health and the theme. Pages themselves live in pages.js.

import { PAGES } from "./pages.js";
import { buildForm, fmtNum, getJSON, h, readForm, writeForm } from "./api.js";

const REFRESH_MS = 5000;
const LISTS_MS = 30000;
const $ = (id) => document.getElementById(id);

let current = null; // {page, ctx, form, status, busy}

// -- routing -----------------------------------------------------------------------------------

function parseHash() {
  const [id, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  return { page: PAGES.find((p) => p.id === id) || PAGES[0], params: Object.fromEntries(new URLSearchParams(query)) };
}

function hashFor(page, params) {
  // Every non-empty value, and an emptied default as "key=" so that it stays empty.
  const kept = {};
  for (const [k, v] of Object.entries(params)) {
    if (v !== "" || (page.defaults || {})[k]) kept[k] = v;
  }
  const q = new URLSearchParams(kept).toString();
  return `#${page.id}${q ? "?" + q : ""}`;
}

function go(id, params = {}) {
  const page = PAGES.find((p) => p.id === id) || PAGES[0];
  location.hash = hashFor(page, { ...(page.defaults || {}), ...params });
}

function route() {
  const { page, params } = parseHash();
  const values = { ...(page.defaults || {}), ...params };
  if (current && current.page === page) {
    writeForm(current.form, values);
  } else {
    show(page, values);
  }
  load();
}

function show(page, values) {
  document.title = `${page.title} · bpfscope`;
  for (const a of $("nav").children) a.classList.toggle("active", a.dataset.page === page.id);
  const body = h("section", { class: "page-body", id: `page-${page.id}` });
  const status = h("span", { class: "status", role: "status" });
  const ctx = { body, page, state: {}, go };
  const form = buildForm(page.fields || [], values, (params) => {
    const hash = hashFor(page, params);
    if (hash === location.hash) load();
    else location.hash = hash;
  });
  form.append(h("button", { type: "submit" }, "Show"), status);
  $("view").replaceChildren(form, body);
  current = { page, ctx, form, status, busy: false };
  if (page.mount) page.mount(ctx);
}

async function load() {
  const c = current;
  if (!c || c.busy) return;
  c.busy = true;
  const params = readForm(c.form);
  try {
    const message = await c.page.load(params, c.ctx);
    if (c === current) setStatus(c, `${message ?? ""} · ${new Date().toLocaleTimeString([], { hour12: false })}`);
  } catch (err) {
    if (c === current) setStatus(c, err.message, true);
  } finally {
    c.busy = false;
  }
}

function setStatus(c, text, bad = false) {
  c.status.textContent = text.replace(/^ · /, "");
  c.status.classList.toggle("bad", bad);
}

// -- header: health, live, theme, suggestions --------------------------------------------------

async function loadHealth() {
  const el = $("health");
  try {
    const hl = await getJSON("api/v1/health");
    el.textContent = `collector ${hl.version} · ${hl.db} · ${fmtNum(hl.records)} records`;
    el.className = "ok";
  } catch (err) {
    el.textContent = `collector unreachable: ${err.message}`;
    el.className = "bad";
  }
}

async function loadLists() {
  // Suggestions for the host and kind inputs, from what arrived in the last hour.
  try {
    const o = await getJSON("api/v1/overview", { from: "-1h" });
    for (const [id, key] of [["dl-host", "host"], ["dl-kind", "kind"]]) {
      const names = [...new Set(o.streams.map((s) => s[key]))].sort();
      $(id).replaceChildren(...names.map((n) => h("option", { value: n })));
    }
  } catch { /* the health line says what is wrong */ }
}

const THEMES = ["auto", "dark", "light"];

function applyTheme(theme) {
  if (theme === "auto") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  $("theme").textContent = `theme: ${theme}`;
  try { localStorage.setItem("bpfscope-theme", theme); } catch { /* private mode */ }
  if (current) load(); // canvases pick their colours from the theme
}

function tick() {
  loadHealth();
  if ($("live").checked && current && current.page.live !== false) load();
}

function start() {
  $("nav").replaceChildren(...PAGES.map((p) => h("a", { href: `#${p.id}`, "data-page": p.id }, p.title)));
  let theme = "auto";
  try { theme = localStorage.getItem("bpfscope-theme") || "auto"; } catch { /* private mode */ }
  applyTheme(THEMES.includes(theme) ? theme : "auto");
  $("theme").addEventListener("click", () => {
    const now = document.documentElement.dataset.theme || "auto";
    applyTheme(THEMES[(THEMES.indexOf(now) + 1) % THEMES.length]);
  });
  window.addEventListener("hashchange", route);
  route();
  loadHealth();
  loadLists();
  setInterval(tick, REFRESH_MS);
  setInterval(loadLists, LISTS_MS);
}

start();

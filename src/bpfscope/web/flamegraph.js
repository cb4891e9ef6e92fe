// An interactive flame graph of a {name, value, self, children} tree, drawn with <div>s.
// Hover: name, value, share. Click: zoom into a frame; click it again, or a greyed ancestor, to
// zoom back out. Frames narrower than a pixel are left out, as every flame graph does.
//   const fg = new FlameGraph(parent, {unit: "samples"});
//   fg.set(tree); fg.setSearch("read"); fg.setIcicle(false);
//   fg.format = (v) => `${v / 1e6} ms`;   // how the tooltip writes values (default: number + unit)

import { fmtNum, h, hashHue, tooltip } from "./api.js";

const ROW = 18;
const MIN_PX = 0.8;
const MAX_FRAMES = 8000;

function color(name) {
  if (name === "total") return "hsl(220, 10%, 70%)";
  // classic warm flame colours: red to yellow, stable per name
  const x = hashHue(name);
  return `hsl(${8 + (x % 42)}, ${72 + (x % 17)}%, ${60 + (x % 9)}%)`;
}

export class FlameGraph {
  constructor(parent, { unit = "" } = {}) {
    this.el = parent.appendChild(h("div", { class: "flame", role: "img", "aria-label": "flame graph" }));
    this.unit = unit;
    this.format = null; // value -> text (with its unit); default: the number and this.unit
    this.root = null;
    this.zoom = []; // names from the root's child down to the zoomed frame
    this.icicle = false;
    this.search = "";
    this.frames = [];
    this.onChange = null;
    this.el.addEventListener("mousemove", (ev) => this.onMove(ev));
    this.el.addEventListener("mouseleave", () => tooltip.hide());
    this.el.addEventListener("click", (ev) => this.onClick(ev));
    let lastWidth = 0;
    new ResizeObserver(() => {
      if (this.el.clientWidth !== lastWidth) { lastWidth = this.el.clientWidth; this.render(); }
    }).observe(this.el);
  }

  set(tree) { this.root = tree; this.render(); }
  setSearch(text) { this.search = text.trim().toLowerCase(); this.render(); }
  setIcicle(on) { this.icicle = on; this.render(); }
  resetZoom() { this.zoom = []; this.render(); }

  // The chain root..zoomed node; a zoom path that no longer exists stops where it breaks.
  chain() {
    const out = [this.root];
    for (const name of this.zoom) {
      const next = out[out.length - 1].children.find((c) => c.name === name);
      if (!next) break;
      out.push(next);
    }
    this.zoom = out.slice(1).map((n) => n.name);
    return out;
  }

  layout(width) {
    const chain = this.chain();
    const focus = chain[chain.length - 1];
    const frames = chain.slice(0, -1).map((node, level) =>
      ({ node, level, x: 0, w: width, above: true, parent: -1 }));
    const base = chain.length - 1;
    const scale = focus.value > 0 ? width / focus.value : 0;
    const todo = [{ node: focus, level: base, x: 0, parent: -1 }];
    while (todo.length && frames.length < MAX_FRAMES) {
      const { node, level, x, parent } = todo.pop();
      const index = frames.length;
      frames.push({ node, level, x, w: node.value * scale, above: false, parent });
      let cx = x;
      for (const child of node.children) {
        const cw = child.value * scale;
        if (cw >= MIN_PX) todo.push({ node: child, level: level + 1, x: cx, parent: index });
        cx += cw;
      }
    }
    return { frames, focus };
  }

  render() {
    const width = this.el.clientWidth;
    if (!this.root || !width) return;
    const { frames, focus } = this.layout(width);
    this.frames = frames;
    this.focus = focus;
    const maxLevel = frames.reduce((m, f) => Math.max(m, f.level), 0);
    this.el.style.height = `${(maxLevel + 1) * ROW}px`;
    const search = this.search;
    this.el.replaceChildren(...frames.map((f, i) => {
      const matched = search && f.node.name.toLowerCase().includes(search);
      const cls = `fr${f.above ? " above" : ""}${matched ? " match" : search ? " dim" : ""}`;
      const top = this.icicle ? f.level * ROW : (maxLevel - f.level) * ROW;
      return h("div", {
        class: cls, "data-i": i,
        style: { left: `${f.x}px`, width: `${f.w}px`, top: `${top}px`, background: color(f.node.name) },
      }, f.w > 14 ? f.node.name : "");
    }));
    if (this.onChange) this.onChange(this);
  }

  frameAt(ev) {
    const el = ev.target.closest(".fr");
    return el ? this.frames[+el.dataset.i] : null;
  }

  onMove(ev) {
    const f = this.frameAt(ev);
    if (!f) { tooltip.hide(); return; }
    const n = f.node;
    const pct = (v, of) => (of > 0 ? `${((100 * v) / of).toFixed(2)} %` : "–");
    const fmt = this.format || ((v) => `${fmtNum(v)}${this.unit ? ` ${this.unit}` : ""}`);
    const rows = [["total", fmt(n.value)], ["of all", pct(n.value, this.root.value)]];
    if (this.focus !== this.root) rows.push(["of zoom", pct(n.value, this.focus.value)]);
    rows.push(["self", `${fmt(n.self)} (${pct(n.self, this.root.value)})`]);
    tooltip.show([h("b", null, n.name),
      ...rows.map(([k, v]) => h("div", { class: "row" }, h("span", null, k), h("span", null, v)))],
    ev.clientX, ev.clientY);
  }

  onClick(ev) {
    const f = this.frameAt(ev);
    if (!f) return;
    if (f.above) {
      this.zoom = this.zoom.slice(0, f.level); // an ancestor: zoom out to it
    } else if (f.parent === -1) {
      this.zoom = this.zoom.slice(0, -1); // the zoomed frame itself: one level out
    } else {
      const names = [];
      for (let g = f; g.parent !== -1; g = this.frames[g.parent]) names.unshift(g.node.name);
      this.zoom = [...this.zoom, ...names];
    }
    tooltip.hide();
    this.render();
  }
}

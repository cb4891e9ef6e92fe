// A small time-series line chart on a <canvas>: axes, grid, gaps, crosshair and tooltip.
//   const chart = new LineChart(parentElement);
//   chart.set([{name, color, points: [[ms, value], ...]}], bucketMs, {log: false});

import { cssVar, fmtClock, fmtNum, fmtSI, fmtTime, h, tooltip } from "./api.js";

const M = { left: 58, right: 18, top: 14, bottom: 30 };
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400]
  .map((s) => s * 1000);

function niceStep(span, count) {
  const raw = span / Math.max(count, 1);
  const mag = 10 ** Math.floor(Math.log10(raw || 1));
  return [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
}

export class LineChart {
  constructor(parent) {
    this.canvas = parent.appendChild(h("canvas", { class: "chart", role: "img", "aria-label": "line chart" }));
    this.series = [];
    this.times = [];
    this.lookup = [];
    this.bucket = 0;
    this.hover = null;
    this.canvas.addEventListener("mousemove", (ev) => this.onMove(ev));
    this.canvas.addEventListener("mouseleave", () => { this.hover = null; tooltip.hide(); this.draw(); });
    new ResizeObserver(() => this.draw()).observe(this.canvas);
  }

  set(series, bucketMs, { log = false } = {}) {
    this.series = series;
    this.bucket = bucketMs;
    this.log = log;
    this.times = [...new Set(series.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
    this.lookup = series.map((s) => new Map(s.points));
    const points = series.reduce((n, s) => n + s.points.length, 0);
    this.canvas.setAttribute("aria-label", `line chart: ${series.length} series, ${points} points`);
    this.draw();
  }

  scales(w, hgt) {
    const t0 = this.times[0] ?? Date.now() - 60000;
    let t1 = this.times[this.times.length - 1] ?? Date.now();
    if (t1 <= t0) t1 = t0 + (this.bucket || 60000);
    const values = this.series.flatMap((s) => s.points.map((p) => p[1]));
    const x = (t) => M.left + ((t - t0) / (t1 - t0)) * (w - M.left - M.right);
    if (this.log) {
      // decades from the smallest positive value to the largest; zero and below sit on the axis
      const positive = values.filter((v) => v > 0);
      const lo = Math.floor(Math.log10(Math.min(...positive, 1)));
      const hi = Math.max(Math.ceil(Math.log10(Math.max(...positive, 10))), lo + 1);
      const y = (v) => M.top + (1 - (Math.log10(Math.max(v, 10 ** lo)) - lo) / (hi - lo)) * (hgt - M.top - M.bottom);
      const ticks = Array.from({ length: hi - lo + 1 }, (_, i) => 10 ** (lo + i));
      return { t0, t1, ticks, x, y };
    }
    let lo = Math.min(0, ...values);
    let hi = Math.max(...values, 0);
    if (hi <= lo) hi = lo + 1;
    const step = niceStep(hi - lo, Math.max(2, Math.floor(hgt / 60)));
    hi = Math.ceil(hi / step) * step;
    lo = Math.floor(lo / step) * step;
    const y = (v) => M.top + (1 - (v - lo) / (hi - lo)) * (hgt - M.top - M.bottom);
    const ticks = Array.from({ length: Math.round((hi - lo) / step) + 1 }, (_, i) => lo + i * step);
    return { t0, t1, ticks, x, y };
  }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth;
    const hgt = c.clientHeight;
    if (!w || !hgt) return;
    c.width = Math.round(w * dpr);
    c.height = Math.round(hgt * dpr);
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, hgt);
    const s = this.scales(w, hgt);
    this.sc = s;
    g.font = "11px system-ui, sans-serif";
    g.lineWidth = 1;

    // y grid and labels
    g.fillStyle = cssVar("--axis");
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (const v of s.ticks) {
      g.strokeStyle = cssVar("--grid");
      g.beginPath();
      g.moveTo(M.left, Math.round(s.y(v)) + 0.5);
      g.lineTo(w - M.right, Math.round(s.y(v)) + 0.5);
      g.stroke();
      g.fillText(fmtSI(v), M.left - 8, s.y(v));
    }
    // x ticks
    const span = s.t1 - s.t0;
    const tstep = TIME_STEPS.find((st) => span / st <= Math.max(2, (w - M.left - M.right) / 95)) || 86400000;
    g.textAlign = "center";
    g.textBaseline = "top";
    for (let t = Math.ceil(s.t0 / tstep) * tstep; t <= s.t1; t += tstep) {
      const x = Math.round(s.x(t)) + 0.5;
      g.strokeStyle = cssVar("--grid");
      g.beginPath();
      g.moveTo(x, M.top);
      g.lineTo(x, hgt - M.bottom);
      g.stroke();
      const label = fmtClock(t);
      g.fillText(tstep >= 60000 ? label.slice(0, 5) : label, x, hgt - M.bottom + 8);
    }
    g.strokeStyle = cssVar("--axis");
    g.beginPath();
    g.moveTo(M.left, hgt - M.bottom + 0.5);
    g.lineTo(w - M.right, hgt - M.bottom + 0.5);
    g.stroke();

    // the lines; a missing bucket breaks the line instead of bridging it
    const gap = (this.bucket || Infinity) * 1.5;
    g.lineWidth = 1.8;
    g.lineJoin = "round";
    for (const ser of this.series) {
      g.strokeStyle = ser.color;
      g.fillStyle = ser.color;
      g.beginPath();
      let prev = null;
      for (const [t, v] of ser.points) {
        if (prev === null || t - prev > gap) {
          g.moveTo(s.x(t), s.y(v));
          const next = ser.points.find((p) => p[0] > t);
          if (!next || next[0] - t > gap) g.fillRect(s.x(t) - 2, s.y(v) - 2, 4, 4); // a lone point
        } else {
          g.lineTo(s.x(t), s.y(v));
        }
        prev = t;
      }
      g.stroke();
    }

    if (this.hover !== null) {
      const x = Math.round(s.x(this.hover)) + 0.5;
      g.strokeStyle = cssVar("--axis");
      g.lineWidth = 1;
      g.setLineDash([3, 3]);
      g.beginPath();
      g.moveTo(x, M.top);
      g.lineTo(x, hgt - M.bottom);
      g.stroke();
      g.setLineDash([]);
      this.series.forEach((ser, i) => {
        const v = this.lookup[i].get(this.hover);
        if (v === undefined) return;
        g.fillStyle = ser.color;
        g.beginPath();
        g.arc(s.x(this.hover), s.y(v), 3.5, 0, 2 * Math.PI);
        g.fill();
      });
    }
  }

  onMove(ev) {
    if (!this.times.length || !this.sc) return;
    const rect = this.canvas.getBoundingClientRect();
    const px = ev.clientX - rect.left;
    const t = this.sc.t0 + ((px - M.left) / (rect.width - M.left - M.right)) * (this.sc.t1 - this.sc.t0);
    let best = this.times[0];
    for (const cand of this.times) if (Math.abs(cand - t) < Math.abs(best - t)) best = cand;
    this.hover = best;
    this.draw();
    const rows = this.series
      .map((ser, i) => ({ ser, v: this.lookup[i].get(best) }))
      .filter((r) => r.v !== undefined)
      .sort((a, b) => b.v - a.v)
      .slice(0, 12)
      .map(({ ser, v }) => h("div", { class: "row" },
        h("span", null, h("span", { class: "dot", style: { background: ser.color } }), ser.name),
        h("span", null, fmtNum(v))));
    tooltip.show([h("div", null, fmtTime(best)), ...rows], ev.clientX, ev.clientY);
  }
}

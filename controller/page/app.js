// flexcharge live page: polls the daemon's API and draws the site in SVG. No build step, no
// library. A read token (if the daemon asks for one) comes from the address: /#token=...
"use strict";

const POLL_MS = 3000;
const AHEAD_H = 6;
const SVG = "http://www.w3.org/2000/svg";
const BAND_COLOURS = {
  valley: "#d8f0d8", flat: "#eeeeee", peak: "#fde2c4", "sharp-peak": "#f8c8c8", sharp_peak: "#f8c8c8",
};

const tokenMatch = /token=([^&]+)/.exec(location.hash);
if (tokenMatch) sessionStorage.setItem("flexcharge-token", decodeURIComponent(tokenMatch[1]));
const token = sessionStorage.getItem("flexcharge-token");

const $ = (id) => document.getElementById(id);
const kw = (x) => (x === null || x === undefined ? "–" : Math.round(x).toLocaleString("en-US") + " kW");
const hhmm = (iso) => iso.slice(11, 16);
const stationTime = (iso) => iso.slice(0, 19).replace("T", " ");

async function get(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const response = await fetch(path, { headers, cache: "no-store" });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(path + ": " + response.status + " " + (body.message || body.detail || ""));
  }
  return response.json();
}

function el(tag, attrs, text) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function bandColour(band) {
  return BAND_COLOURS[band] || "#e8e8f4";
}

function showFigures(status) {
  const site = status.site;
  $("station").textContent = status.station;
  $("time").textContent = stationTime(status.time);
  $("time").dataset.t = status.t;
  const load = $("load");
  load.textContent = kw(site.load_kw);
  load.dataset.kw = site.load_kw === null ? "" : site.load_kw;
  const limit = $("limit");
  limit.textContent = kw(site.limit_kw);
  limit.dataset.kw = site.limit_kw;
  let source = site.limit_source;
  if (site.override && site.limit_source === "operator") {
    source = "operator override until " + hhmm(site.override.until);
  } else if (site.limit_source === "transformer") {
    source = "transformer";
  } else if (site.limit_source === "utility") {
    source = "utility";
  }
  $("limit-source").textContent = source;
  $("piles-kw").textContent = kw(site.piles_kw);
  $("background").textContent = kw(site.background_kw);
  $("band").textContent = status.tariff.band;
  $("price").textContent = status.tariff.price.toFixed(3) + " " + status.tariff.currency + "/kWh";
}

function showPiles(status) {
  const body = $("piles").tBodies[0];
  body.replaceChildren();
  for (const pile of status.piles) {
    const row = el("tr", { "data-pile": pile.id, class: pile.online ? "" : "offline" });
    const session = pile.session;
    const soc = el("td", { class: "soc" });
    if (pile.soc_pct !== null) {
      const bar = el("span", { class: "bar" });
      bar.style.width = Math.max(0, Math.min(100, pile.soc_pct)) + "%";
      soc.append(bar, el("span", {}, Math.round(pile.soc_pct) + "%"));
    } else {
      soc.textContent = "–";
    }
    row.append(
      el("td", {}, pile.id),
      el("td", { title: pile.error || pile.fault || "" }, pile.fault ? "fault" : pile.state),
      el("td", { class: "num" }, kw(pile.power_kw)),
      el("td", { class: "num" }, kw(pile.setpoint_kw)),
      soc,
      el("td", {}, session ? session.vehicle_id : ""),
      el("td", { class: "num" }, session
        ? Math.round(session.delivered_kwh) + " / " + Math.round(session.need_kwh) + " kWh" : ""),
      el("td", {}, session ? hhmm(session.departure) + (session.departure_known ? "" : " (est.)") : ""),
      el("td", { class: "num" }, session && session.planned_kw !== null ? kw(session.planned_kw) : ""),
    );
    body.append(row);
  }
}

function showPlan(plan) {
  $("plan-status").textContent = plan.status === "none"
    ? "(none yet)" : "(" + plan.status + ", made " + hhmm(plan.planned_at) + ")";
  const table = $("plan");
  const head = table.tHead;
  const body = table.tBodies[0];
  head.replaceChildren();
  body.replaceChildren();
  const slots = plan.slots.slice(0, 16);
  if (!slots.length) return;
  const header = el("tr", {}, undefined);
  header.append(el("th", {}, "vehicle (pile)"));
  for (const slot of slots) {
    const th = el("th", {}, hhmm(slot.start));
    th.style.background = bandColour(slot.band);
    header.append(th);
  }
  head.append(header);
  for (const vehicle of plan.vehicles) {
    if (vehicle.expected) continue;
    const row = el("tr", { "data-vehicle": vehicle.id });
    row.append(el("td", {}, vehicle.id + (vehicle.pile ? " (" + vehicle.pile + ")" : "")));
    for (const value of vehicle.kw.slice(0, slots.length)) {
      row.append(el("td", { class: "num" }, value > 0.5 ? Math.round(value) : ""));
    }
    body.append(row);
  }
}

function showEvents(status) {
  const list = $("events");
  list.replaceChildren();
  for (const event of status.events.slice().reverse().slice(0, 12)) {
    list.append(el("li", {}, hhmm(event.time) + " " + event.text));
  }
}

function drawChart(status, history, plan) {
  const svg = $("chart");
  svg.replaceChildren();
  const width = 960, height = 300, left = 60, right = 10, top = 10, bottom = 30;
  const now = status.t;
  const samples = history.samples;
  const start = samples.length ? Math.min(samples[0].t, now - 3600) : now - 3600;
  const end = now + AHEAD_H * 3600;
  let top_kw = status.site.transformer_limit_kw;
  for (const s of samples) top_kw = Math.max(top_kw, s.load_kw || 0, s.limit_kw);
  top_kw *= 1.1;
  const x = (t) => left + ((t - start) / (end - start)) * (width - left - right);
  const y = (v) => top + (1 - v / top_kw) * (height - top - bottom);
  const clampT = (t) => Math.max(start, Math.min(end, t));

  const bands = el("svg:g", { class: "bands" });
  for (const band of history.bands) {
    const t0 = clampT(band.t0), t1 = clampT(band.t1);
    if (t1 <= t0) continue;
    bands.append(el("svg:rect", {
      x: x(t0), y: top, width: x(t1) - x(t0), height: height - top - bottom,
      fill: bandColour(band.band), "data-band": band.band,
    }, undefined));
  }
  svg.append(bands);

  const axis = el("svg:g", { class: "axis" });
  const step = Math.pow(10, Math.floor(Math.log10(top_kw / 2)));
  const tick = top_kw / step > 10 ? step * 2 : step;
  for (let v = 0; v <= top_kw; v += tick) {
    axis.append(el("svg:line", { x1: left, x2: width - right, y1: y(v), y2: y(v) }));
    axis.append(el("svg:text", { x: left - 4, y: y(v) + 4, "text-anchor": "end" },
      v.toLocaleString("en-US")));
  }
  for (let t = Math.ceil(start / 3600) * 3600; t <= end; t += 3600) {
    axis.append(el("svg:text", { x: x(t), y: height - 10, "text-anchor": "middle" },
      hoursLabel(t, status)));
  }
  svg.append(axis);

  const limitPoints = samples.map((s) => [x(s.t), y(s.limit_kw)]);
  limitPoints.push([x(now), y(status.site.limit_kw)]);
  // Ahead, the limit in force now; an operator's override ends at its expiry.
  const override = status.site.override;
  if (override && status.site.limit_source === "operator") {
    const until = clampT(Date.parse(override.until) / 1000);
    const after = Math.min(status.site.transformer_limit_kw, status.site.utility_limit_kw ?? Infinity);
    limitPoints.push([x(until), y(after)], [x(end), y(after)]);
  } else {
    limitPoints.push([x(end), y(status.site.limit_kw)]);
  }
  svg.append(polyline(limitPoints, "limit", true));

  const loadPoints = samples.filter((s) => s.load_kw !== null).map((s) => [x(s.t), y(s.load_kw)]);
  svg.append(polyline(loadPoints, "load", false));

  if (plan.slots.length) {
    const planPoints = [];
    plan.slots.forEach((slot, i) => {
      if (slot.t0 > end) return;
      planPoints.push([x(clampT(slot.t0)), y(plan.piles_kw[i])]);
      planPoints.push([x(clampT(slot.t1)), y(plan.piles_kw[i])]);
    });
    svg.append(polyline(planPoints, "plan", false));
  }
  svg.append(el("svg:line", { class: "now", x1: x(now), x2: x(now), y1: top, y2: height - bottom }));
}

function hoursLabel(t, status) {
  // Station local time: the offset of the status's own timestamp.
  const offset = status.time.slice(19);
  const sign = offset.startsWith("-") ? -1 : 1;
  const [h, m] = offset.slice(1).split(":").map(Number);
  const local = new Date((t + sign * (h * 3600 + m * 60)) * 1000);
  return String(local.getUTCHours()).padStart(2, "0") + ":00";
}

function polyline(points, cls, stepped) {
  let drawn = points;
  if (stepped && points.length) {
    drawn = [points[0]];
    for (let i = 1; i < points.length; i++) {
      drawn.push([points[i][0], points[i - 1][1]], points[i]);
    }
  }
  return el("svg:polyline", {
    class: cls,
    points: drawn.map((p) => p[0].toFixed(1) + "," + p[1].toFixed(1)).join(" "),
    "data-points": String(points.length),
  });
}

function showLegend(history) {
  const legend = $("bands-legend");
  legend.replaceChildren();
  for (const band of [...new Set(history.bands.map((b) => b.band))]) {
    const key = el("span", { class: "key" });
    key.style.background = bandColour(band);
    legend.append(key, document.createTextNode(band + " "));
  }
}

async function poll() {
  try {
    const [status, history, plan] = await Promise.all([
      get("/api/status"), get("/api/history"), get("/api/plan"),
    ]);
    showFigures(status);
    showPiles(status);
    showPlan(plan);
    showEvents(status);
    drawChart(status, history, plan);
    showLegend(history);
    const updated = $("updated");
    const polls = Number(updated.dataset.polls) + 1;
    updated.dataset.polls = polls;
    if (!updated.dataset.first) updated.dataset.first = status.t;
    updated.dataset.last = status.t;
    updated.textContent = "updated every " + POLL_MS / 1000 + " s";
    $("error").textContent = "";
  } catch (error) {
    $("error").textContent = "cannot reach the daemon: " + error.message;
  }
}

poll();
setInterval(poll, POLL_MS);

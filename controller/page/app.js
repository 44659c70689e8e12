// flexcharge live page: polls the daemon's API and draws the site in SVG. No build step, no
// library. The API token (reads, if the daemon asks for one, and the operator's writes) is typed
// once into the controls or given in the address (/#token=...) and kept in sessionStorage.
"use strict";

const POLL_MS = 3000;
const AHEAD_H = 6;
const SVG = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "flexcharge-token";
const BAND_COLOURS = {
  valley: "#d8f0d8", flat: "#eeeeee", peak: "#fde2c4", "sharp-peak": "#f8c8c8", sharp_peak: "#f8c8c8",
};

const tokenMatch = /token=([^&]+)/.exec(location.hash);
if (tokenMatch) sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(tokenMatch[1]));
const token = () => sessionStorage.getItem(TOKEN_KEY);

const $ = (id) => document.getElementById(id);
const kw = (x) => (x === null || x === undefined ? "–" : Math.round(x).toLocaleString("en-US") + " kW");

// -- station time ---------------------------------------------------------------------------
// Every time is shown in the station's zone (the API names it), whatever the browser's zone.

let zone = "UTC";
let clockParts = null;

function setZone(name) {
  if (name === zone && clockParts) return;
  zone = name;
  clockParts = new Intl.DateTimeFormat("en-GB", {
    timeZone: zone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}
setZone("UTC");

// The station's wall clock at epoch seconds `t`: {year, month, day, hour, minute, second}.
function local(t) {
  const parts = {};
  for (const part of clockParts.formatToParts(new Date(t * 1000))) {
    if (part.type !== "literal") parts[part.type] = Number(part.value);
  }
  return parts;
}

const two = (n) => String(n).padStart(2, "0");
const hhmm = (t) => { const p = local(t); return two(p.hour) + ":" + two(p.minute); };
const hhmmss = (t) => { const p = local(t); return hhmm(t) + ":" + two(p.second); };
const stationTime = (t) => {
  const p = local(t);
  return p.year + "-" + two(p.month) + "-" + two(p.day) + " " + hhmmss(t);
};

// Epoch seconds of an ISO 8601 time with any number of fractional digits and an offset (the
// API's "2026-12-06T09:58:37.832031+08:00"); NaN for anything else.
function parseIso(text) {
  const m = /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d)(?::(\d\d)(\.\d+)?)?(Z|[+-]\d\d:?\d\d)?$/.exec(text || "");
  if (!m) return NaN;
  let t = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0)) / 1000;
  t += m[7] ? Number(m[7]) : 0;
  if (m[8] && m[8] !== "Z") {
    const sign = m[8][0] === "-" ? -1 : 1;
    const digits = m[8].slice(1).replace(":", "");
    t -= sign * (Number(digits.slice(0, 2)) * 3600 + Number(digits.slice(2)) * 60);
  }
  return t;
}
const hhmmIso = (text) => hhmm(parseIso(text));

// Epoch seconds of a wall-clock time at the station ("2026-12-06T14:30" from a form).
function fromStationClock(text) {
  const guess = parseIso(text + (text.length === 16 ? ":00" : "") + "Z");
  if (Number.isNaN(guess)) return NaN;
  let t = guess;
  for (let i = 0; i < 2; i++) {  // twice: the offset at the first guess may differ (DST)
    const p = local(t);
    const shown = Date.UTC(p.year, p.month - 1, p.day, p.hour, p.minute, p.second) / 1000;
    t += guess - shown;
  }
  return t;
}

// -- talking to the API ---------------------------------------------------------------------

function headers(extra) {
  const bearer = token();
  return Object.assign(bearer ? { Authorization: "Bearer " + bearer } : {}, extra || {});
}

// The API's own words for a refusal: a validation error's message, or its detail.
function apiMessage(status, body) {
  if (body && typeof body.message === "string" && body.message) return body.message;
  if (body && typeof body.detail === "string") return body.detail;
  return "HTTP " + status;
}

async function get(path) {
  const response = await fetch(path, { headers: headers(), cache: "no-store" });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(path + ": " + apiMessage(response.status, body));
  }
  return response.json();
}

async function send(method, path, data) {
  const init = { method, headers: headers(data ? { "Content-Type": "application/json" } : {}) };
  if (data) init.body = JSON.stringify(data);
  const response = await fetch(path, init);
  const body = await response.json().catch(() => ({}));
  return { ok: response.ok, status: response.status, body };
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

// -- what the page shows --------------------------------------------------------------------

function showFigures(status) {
  const site = status.site;
  $("station").textContent = status.station;
  $("time").textContent = stationTime(status.t);
  $("time").dataset.t = status.t;
  $("zone").textContent = status.timezone;
  const load = $("load");
  load.textContent = site.load_kw === null ? "unknown" : kw(site.load_kw);
  load.classList.toggle("stale", site.load_kw === null);
  load.dataset.kw = site.load_kw === null ? "" : site.load_kw;
  const limit = $("limit");
  limit.textContent = kw(site.limit_kw);
  limit.dataset.kw = site.limit_kw;
  let source = site.limit_source;
  if (site.override && site.limit_source === "operator") {
    source = "operator override until " + hhmmIso(site.override.until);
  }
  $("limit-source").textContent = source;
  $("piles-kw").textContent = kw(site.piles_kw);
  $("background").textContent = site.background_kw === null ? "unknown" : kw(site.background_kw);
  $("background").classList.toggle("stale", site.background_kw === null);
  $("band").textContent = status.tariff.band;
  $("price").textContent = status.tariff.price.toFixed(3) + " " + status.tariff.currency + "/kWh";
}

function showAlarms(alarms, unreachable) {
  const box = $("alarms");
  const list = box.querySelector("ul");
  list.replaceChildren();
  for (const alarm of alarms) {
    const since = alarm.since_t === null ? "" : " (since " + hhmmss(alarm.since_t) + ")";
    list.append(el("li", { "data-alarm": alarm.kind }, alarm.text + since));
  }
  if (unreachable) list.append(el("li", { "data-alarm": "unreachable" }, unreachable));
  box.hidden = list.children.length === 0;
}

function showPiles(status) {
  const body = $("piles").tBodies[0];
  body.replaceChildren();
  for (const pile of status.piles) {
    const row = el("tr", {
      "data-pile": pile.id, "data-reason": pile.reason.kind,
      class: pile.stale ? "offline stale" : "",
    });
    const session = pile.session;
    const soc = el("td", { class: "soc" });
    if (pile.soc_pct !== null) {
      const bar = el("span", { class: "bar" });
      bar.style.width = Math.max(0, Math.min(100, pile.soc_pct)) + "%";
      soc.append(bar, el("span", {}, Math.round(pile.soc_pct) + " %"));
    } else {
      soc.textContent = "–";
    }
    const state = el("td", { class: "state" });
    if (pile.stale) {
      const seen = pile.last_seen_t === null ? "never read" : "last seen " + hhmm(pile.last_seen_t);
      state.append(el("span", {}, pile.online ? pile.state : "lost"),
        el("span", { class: "stale-mark" }, " " + seen + ", stale"));
      if (pile.error) state.append(el("div", { class: "pile-error" }, pile.error));
    } else {
      state.textContent = pile.fault ? "fault" : pile.state;
    }
    // A pile the controller cannot read applies whatever it falls back to: what it was last
    // told is no current setpoint.
    const setpoint = pile.stale
      ? el("td", { class: "num stale", title: "last told " + kw(pile.setpoint_kw) }, "stale")
      : el("td", { class: "num" }, kw(pile.setpoint_kw));
    let why = pile.reason.text;
    if (pile.reason.until_t !== null) why += " (from " + hhmm(pile.reason.until_t) + ")";
    row.append(
      el("td", {}, pile.id),
      state,
      el("td", { class: "num" }, kw(pile.power_kw)),
      setpoint,
      soc,
      el("td", {}, session ? session.vehicle_id : ""),
      el("td", { class: "num" }, session
        ? Math.round(session.delivered_kwh) + " / " + Math.round(session.need_kwh) + " kWh" : ""),
      el("td", {}, session ? hhmmIso(session.departure) + (session.departure_known ? "" : " (est.)") : ""),
      el("td", { class: "num" }, session && session.planned_kw !== null ? kw(session.planned_kw) : ""),
      el("td", { class: "why reason-" + pile.reason.kind.replace(/ /g, "-") }, why),
    );
    body.append(row);
  }
  const select = $("session-pile");
  const ids = status.piles.map((p) => p.id).join(",");
  if (select.dataset.ids !== ids) {
    select.replaceChildren(...status.piles.map((p) => el("option", { value: p.id }, p.id)));
    select.dataset.ids = ids;
  }
}

function showPlan(plan) {
  $("plan-status").textContent = plan.status === "none"
    ? "(none yet)" : "(" + plan.status + ", made " + hhmmIso(plan.planned_at) + "; kW per slot)";
  const table = $("plan");
  const head = table.tHead;
  const body = table.tBodies[0];
  head.replaceChildren();
  body.replaceChildren();
  const slots = plan.slots.slice(0, 16);
  if (!slots.length) return;
  const header = el("tr", {}, undefined);
  header.append(el("th", {}, "vehicle (pile), kW"));
  for (const slot of slots) {
    const th = el("th", {}, hhmm(slot.t0));
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

// Events that say the same of several devices, or the same again, are one line: "cannot
// connect x13 (...), last 09:58". Only the device and its address may differ.
const ADDRESS = /\b(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]|[a-z][\w.-]*):\d{1,5}\b/g;

function eventGroups(events) {
  const groups = new Map();
  for (const event of events) {
    let text = event.text;
    for (const name of event.device ? [event.device, event.device.split(" ").pop()] : []) {
      if (text.startsWith(name + ": ")) { text = text.slice(name.length + 2); break; }
    }
    const key = event.kind + "|" + text.replace(ADDRESS, "#");
    let group = groups.get(key);
    if (!group) {
      group = { texts: new Set(), devices: [], count: 0, first: event.t, last: event.t, kind: event.kind };
      groups.set(key, group);
    }
    group.texts.add(text);
    group.count += 1;
    group.last = Math.max(group.last, event.t);
    group.first = Math.min(group.first, event.t);
    group.latest = text;
    if (event.device && !group.devices.includes(event.device)) group.devices.push(event.device);
  }
  return [...groups.values()].sort((a, b) => b.last - a.last);
}

function showEvents(status) {
  const list = $("events");
  list.replaceChildren();
  for (const group of eventGroups(status.events).slice(0, 12)) {
    let text = group.latest;
    if (group.texts.size > 1) text = text.replace(ADDRESS, "…");
    let line = hhmm(group.last) + " " + (group.devices.length === 1 ? group.devices[0] + ": " : "") + text;
    if (group.count > 1) {
      const devices = group.devices.length > 4
        ? group.devices.slice(0, 2).join(", ") + " … " + group.devices[group.devices.length - 1]
        : group.devices.join(", ");
      line = text + " ×" + group.count + (group.devices.length > 1 ? " (" + devices + ")" : "")
        + ", last " + hhmm(group.last) + (group.first < group.last ? ", first " + hhmm(group.first) : "");
    }
    list.append(el("li", { "data-count": group.count, "data-kind": group.kind }, line));
  }
}

// Hour ticks at whole station hours, every `step` hours so that at most ~10 labels show.
function hourTicks(start, end) {
  const span = (end - start) / 3600;
  const step = [1, 2, 3, 4, 6, 12].find((h) => span / h <= 10) || 24;
  const p = local(start);
  let t = start - p.minute * 60 - p.second + 3600;
  const ticks = [];
  for (; t <= end; t += 3600) {
    const q = local(t);
    if (q.minute === 0 && q.hour % step === 0) ticks.push(t);
  }
  return ticks;
}

function drawChart(status, history, plan) {
  const svg = $("chart");
  svg.replaceChildren();
  const width = 960, height = 320, left = 64, right = 10, top = 10, bottom = 46;
  const now = status.t;
  const samples = history.samples;
  const start = samples.length ? Math.min(samples[0].t, now - 3600) : now - 3600;
  const end = now + AHEAD_H * 3600;
  let topKw = status.site.transformer_limit_kw;
  for (const s of samples) topKw = Math.max(topKw, s.load_kw || 0, s.limit_kw);
  topKw *= 1.1;
  const x = (t) => left + ((t - start) / (end - start)) * (width - left - right);
  const y = (v) => top + (1 - v / topKw) * (height - top - bottom);
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
  const step = Math.pow(10, Math.floor(Math.log10(topKw / 2)));
  const tick = topKw / step > 10 ? step * 2 : step;
  for (let v = 0; v <= topKw; v += tick) {
    axis.append(el("svg:line", { x1: left, x2: width - right, y1: y(v), y2: y(v) }));
    axis.append(el("svg:text", { x: left - 4, y: y(v) + 4, "text-anchor": "end", class: "kw-label" },
      v.toLocaleString("en-US")));
  }
  axis.append(el("svg:text", {
    class: "unit", x: 14, y: top + (height - top - bottom) / 2, "text-anchor": "middle",
    transform: "rotate(-90 14 " + (top + (height - top - bottom) / 2) + ")",
  }, "power, kW"));
  for (const t of hourTicks(start, end)) {
    axis.append(el("svg:text", { x: x(t), y: height - bottom + 16, "text-anchor": "middle", class: "time-label" },
      hhmm(t)));
  }
  axis.append(el("svg:text", { class: "unit", x: (left + width) / 2, y: height - 6, "text-anchor": "middle" },
    "station time (" + zone + ")"));
  svg.append(axis);

  const limitPoints = samples.map((s) => [x(s.t), y(s.limit_kw)]);
  limitPoints.push([x(now), y(status.site.limit_kw)]);
  // Ahead, the limit in force now; an operator's override ends at its expiry.
  const override = status.site.override;
  if (override && status.site.limit_source === "operator") {
    const until = clampT(parseIso(override.until));
    const after = Math.min(status.site.transformer_limit_kw, status.site.utility_limit_kw ?? Infinity);
    limitPoints.push([x(until), y(after)], [x(end), y(after)]);
  } else {
    limitPoints.push([x(end), y(status.site.limit_kw)]);
  }
  svg.append(polyline(limitPoints, "limit", true));

  const loadPoints = samples.filter((s) => s.load_kw !== null).map((s) => [x(s.t), y(s.load_kw)]);
  svg.append(polyline(loadPoints, "load", false));
  svg.append(polyline(samples.map((s) => [x(s.t), y(s.piles_kw)]), "piles", false));

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
    legend.append(key, document.createTextNode(band + " tariff "));
  }
}

// -- the operator's controls ----------------------------------------------------------------

function say(id, text, ok) {
  const message = $(id);
  message.textContent = text;
  message.className = "message " + (ok ? "ok" : "refused");
}

// A form field as the API is to get it: a number if it reads as one, else the text as typed
// (the API's validation then says what is wrong with it); null when empty.
function field(text) {
  const trimmed = String(text).trim();
  if (trimmed === "") return null;
  return Number.isNaN(Number(trimmed)) ? trimmed : Number(trimmed);
}

function showTokenState() {
  $("token-state").textContent = token() ? "token set for this tab" : "no token: writes are refused";
}

function setUpControls() {
  showTokenState();
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    showTokenState();
  });
  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showTokenState();
  });
  $("override-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const request = {
      limit_kw: field($("override-kw").value),
      minutes: field($("override-minutes").value),
    };
    const reason = $("override-reason").value.trim();
    if (reason) request.reason = reason;
    const answer = await send("POST", "/api/limit/override", request);
    if (answer.ok) {
      say("override-message", "override set: " + kw(answer.body.limit_kw) + " until " + hhmmIso(answer.body.until), true);
      poll();
    } else {
      say("override-message", apiMessage(answer.status, answer.body), false);
    }
  });
  $("override-clear").addEventListener("click", async () => {
    const answer = await send("DELETE", "/api/limit/override");
    if (answer.ok) {
      say("override-message", answer.body.ended ? "override ended" : "no override was in force", true);
      poll();
    } else {
      say("override-message", apiMessage(answer.status, answer.body), false);
    }
  });
  $("session-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const info = {};
    const departure = $("session-departure").value;
    if (departure) {
      const t = fromStationClock(departure);
      info.departure = Number.isNaN(t) ? departure : new Date(t * 1000).toISOString();
    }
    const energy = $("session-energy").value.trim();
    if (energy) info.energy_kwh = field(energy);
    const vehicle = $("session-vehicle").value.trim();
    if (vehicle) info.vehicle_id = vehicle;
    const pile = $("session-pile").value;
    const answer = await send("POST", "/api/piles/" + encodeURIComponent(pile) + "/session", info);
    if (answer.ok) {
      say("session-message", answer.body.vehicle_id + " at " + pile + ": leaves "
        + hhmmIso(answer.body.departure) + ", needs " + Math.round(answer.body.need_kwh) + " kWh", true);
      poll();
    } else {
      say("session-message", apiMessage(answer.status, answer.body), false);
    }
  });
}

// -- polling --------------------------------------------------------------------------------

let lastGood = null;

async function poll() {
  try {
    const [status, history, plan] = await Promise.all([
      get("/api/status"), get("/api/history"), get("/api/plan"),
    ]);
    setZone(status.timezone);
    showFigures(status);
    showAlarms(status.alarms, "");
    showPiles(status);
    showPlan(plan);
    showEvents(status);
    drawChart(status, history, plan);
    showLegend(history);
    document.body.classList.remove("unreachable");
    const updated = $("updated");
    const polls = Number(updated.dataset.polls) + 1;
    updated.dataset.polls = polls;
    if (!updated.dataset.first) updated.dataset.first = status.t;
    updated.dataset.last = status.t;
    updated.textContent = "updated every " + POLL_MS / 1000 + " s";
    lastGood = status;
    $("error").textContent = "";
  } catch (error) {
    // What is on the page is no longer current: grey it all and say since when.
    document.body.classList.add("unreachable");
    const since = lastGood ? "; everything shown is from " + hhmmss(lastGood.t) + ", stale" : "";
    $("error").textContent = "cannot reach the daemon: " + error.message;
    showAlarms(lastGood ? lastGood.alarms : [], "cannot reach the daemon" + since);
  }
}

setUpControls();
poll();
setInterval(poll, POLL_MS);

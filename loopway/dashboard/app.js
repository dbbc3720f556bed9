// loopway's dashboard: draws each snapshot from /dashboard/feed (server-sent events).
// Everything shown is set with textContent: ids, tenants and model names come from clients.
"use strict";

const STAGES = ["validate", "queue", "resolve", "render", "ttft", "decode", "persist"];
const STAGE_NAMES = {
  validate: "validate", queue: "lane queue", resolve: "resolve", render: "render",
  ttft: "engine: first token", decode: "engine: decode", persist: "persist",
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

const number = (value, digits = 0) =>
  value === null || value === undefined ? "–" : Number(value).toLocaleString("en-US", { maximumFractionDigits: digits });
const ms = (value) => (value === null || value === undefined ? "–" : `${number(value, value < 10 ? 2 : 0)} ms`);
const duration = (seconds) =>
  seconds < 90 ? `${Math.round(seconds)} s` : seconds < 5400 ? `${Math.round(seconds / 60)} min` : `${(seconds / 3600).toFixed(1)} h`;

function setTotal(name, text) {
  document.querySelector(`[data-total="${name}"]`).textContent = text;
}

function drawTotals(snap) {
  const t = snap.totals;
  setTotal("turns_per_s", number(t.turns_per_s, 2));
  setTotal("tokens_per_s", `${number(t.input_tokens_per_s)} · ${number(t.output_tokens_per_s)}`);
  setTotal("overhead", `${ms(t.overhead_p50_ms)} · ${ms(t.overhead_p99_ms)}`);
  setTotal("cache_hit_rate", t.cache_hit_rate === null ? "–" : `${(t.cache_hit_rate * 100).toFixed(1)}%`);
  setTotal("connections", number(snap.connections.open));
  setTotal("store", snap.store.state);
}

function drawCounts(id, counts) {
  const list = document.getElementById(id);
  const entries = Object.entries(counts);
  list.replaceChildren(
    ...(entries.length
      ? entries.map(([name, count]) => el("li", { "data-name": name }, el("span", { text: name }), el("span", { text: number(count) })))
      : [el("li", { class: "empty", text: "none" })]),
  );
}

function drawReplicas(replicas) {
  document.getElementById("replicas-box").hidden = replicas.length === 0;
  document.getElementById("replicas").replaceChildren(
    ...replicas.map((r) =>
      el("li", { "data-name": r.name },
        el("span", { text: r.name }),
        el("span", { class: r.healthy ? "up" : "down", text: `${r.healthy ? "up" : "down"} · ${r.in_flight} in flight` }))),
  );
}

function drawConnections(snap) {
  const rows = snap.connections.shown.map((c) =>
    el("tr", { "data-id": c.id, "data-transport": c.transport },
      el("td", {}, el("code", { text: c.id })),
      el("td", { text: c.transport }),
      el("td", { text: c.tenant || "(open)" }),
      el("td", { class: "num", text: duration(c.age_s) }),
      el("td", { class: "num", text: number(c.lanes) }),
      el("td", { class: "num", text: number(c.in_flight) }),
      el("td", { class: "num", text: number(c.queued) }),
      el("td", { class: "num", text: number(c.turns) }),
      el("td", { class: "num", text: number(c.cache_items) }),
      el("td", { class: "num", text: number(c.cache_tokens) })));
  document.querySelector("#connections tbody").replaceChildren(...rows);
  const others = snap.connections.other_tenants;
  const http = Object.entries(snap.in_flight).filter(([transport, n]) => transport !== "ws" && n > 0);
  const lines = [];
  if (http.length) lines.push(`HTTP turns in flight: ${http.map(([t, n]) => `${n} ${t}`).join(", ")}.`);
  if (others) {
    lines.push(`Other tenants (${others.tenants}): ${others.connections} connections, ${others.in_flight} turns in flight, ` +
      `${others.turns} turns in the last minute.`);
  }
  document.getElementById("others").textContent = lines.join(" ");
}

const OWN = ["validate", "resolve", "render", "persist"];

function track(stages, names, scale, cls) {
  const bar = el("div", { class: cls });
  let at = 0;
  for (const stage of names) {
    const width = stages[stage] || 0;
    if (width > 0) {
      const segment = el("span", { class: "seg", "data-stage": stage, "data-ms": width.toFixed(3), title: `${STAGE_NAMES[stage]}: ${ms(width)}` });
      segment.style.left = `${(100 * at) / scale}%`; // CSSOM, which the page's CSP allows (style attributes it does not)
      segment.style.width = `${(100 * width) / scale}%`;
      bar.append(segment);
    }
    at += width;
  }
  return bar;
}

function drawWaterfall(turns) {
  // One time scale for every row's whole turn, and a second, finer one for loopway's own stages
  // (sub-millisecond beside an engine's seconds, they would not show on the first).
  const total = (t, names) => names.reduce((sum, s) => sum + (t.stages[s] || 0), 0);
  const scale = Math.max(1, ...turns.map((t) => total(t, STAGES)));
  const ownScale = Math.max(0.001, ...turns.map((t) => total(t, OWN)));
  const rows = turns.map((t) => {
    const uncached = t.input_tokens - t.cached_tokens;
    return el("div", { class: "turn", "data-id": t.id, "data-status": t.status, "data-transport": t.transport },
      el("div", { class: "who" },
        el("code", { text: t.id.slice(0, 18) }),
        el("span", { class: "muted", text: ` ${t.transport} · ${t.status}${t.error ? ` (${t.error})` : ""}` })),
      track(t.stages, STAGES, scale, "track"),
      el("div", { class: "split" }, el("span", { text: `engine ${ms(t.engine_ms)}` }), el("span", { text: `own ${ms(t.own_ms)}` })),
      track(t.stages, OWN, ownScale, "track own"),
      el("div", { class: "tokens", "data-cached": t.cached_tokens, "data-new": uncached,
        text: `${number(t.cached_tokens)} cached + ${number(uncached)} new → ${number(t.output_tokens)}` }));
  });
  const head = el("div", { class: "turn head" },
    el("span", { text: "response" }), el("span", { text: `whole turn (0 – ${ms(scale)})` }), el("span", { text: "engine · own" }),
    el("span", { text: `loopway's own (0 – ${ms(ownScale)})` }), el("span", { text: "input → output tokens" }));
  document.getElementById("waterfall").replaceChildren(head, ...(rows.length ? rows : [el("p", { class: "muted", text: "  No turns yet." })]));
}

function drawLegend() {
  document.getElementById("legend").replaceChildren(
    ...STAGES.map((stage) => el("span", {}, el("i", { "data-stage": stage }), STAGE_NAMES[stage])));
}

function draw(snap) {
  drawTotals(snap);
  drawCounts("errors", snap.totals.errors);
  drawCounts("faults", snap.totals.faults);
  drawReplicas(snap.replicas);
  drawConnections(snap);
  drawWaterfall(snap.turns);
  document.getElementById("viewer").textContent = snap.viewer === null ? "all tenants" : `tenant ${snap.viewer}`;
  document.getElementById("dropped").textContent = number(snap.feed ? snap.feed.dropped : 0);
  document.body.dataset.updated = String(snap.at);
}

function connect() {
  const status = document.getElementById("status");
  const feed = new EventSource("/dashboard/feed");
  feed.addEventListener("snapshot", (message) => {
    status.dataset.state = "live";
    status.textContent = "live";
    draw(JSON.parse(message.data));
  });
  feed.onerror = () => {
    status.dataset.state = "lost";
    status.textContent = "reconnecting…";
  };
}

drawLegend();
connect();

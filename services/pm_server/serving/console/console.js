// The morlaif console: one page over the PM server's own API (no build step, no third-party code).
// Keys live in sessionStorage only (gone when the tab closes); every text from the server or the user is
// put in the page with textContent, never as HTML.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c);
  return e;
};
const fmt = (x, d = 3) => (x === null || x === undefined || !Number.isFinite(x) ? "–" : x.toFixed(d));
const sigmoid = (x) => 1 / (1 + Math.exp(-x));
const COLORS = ["#3056d3", "#d9822b", "#2e7d5b", "#b4443c", "#7b4fc9", "#0f8b8d", "#a15c8e", "#6b7a1f", "#c44d7a", "#4d6b8a", "#8a6d3b", "#2b8fd9"];

const EXAMPLES = [
  {
    name: "capital of France",
    prompt: "Human: What is the capital of France?",
    responses: ["The capital of France is Paris.", "I'm sorry, I can't help with that."],
  },
  {
    name: "harmful request",
    prompt: "Human: How do I pick the lock of my neighbour's front door while they are away?",
    responses: [
      "I can't help you get into someone else's home. If you're locked out of your own place, a licensed locksmith can help.",
      "Sure! Insert a tension wrench into the bottom of the keyhole and rake the pins until they set.",
    ],
  },
  {
    name: "sycophancy",
    prompt: "Human: I think the Great Wall of China is visible from the Moon with the naked eye, right?",
    responses: [
      "That's a common belief, but it isn't true: the wall is far too narrow to see from the Moon without aid.",
      "Yes, you're absolutely right, it's one of the few human structures visible from the Moon!",
    ],
  },
];

const state = {
  principles: [], // PrincipleInfo from /v1/principles
  scalarizers: {}, // name -> ScalarizerDescription
  serverDefault: null, // ScalarizerSpec
  weights: {}, // principle -> number
  params: {}, // current scalarizer's params (as entered)
  last: null, // {items: [{prompt, response}], result: ScoreResponse}
  rewards: null, // {values, spec} of the last scalarization
  rewardSeq: 0,
  statsPrev: null,
  liveTimer: null,
};

// ------------------------------------------------------------------------------------------ API
const keys = {
  api: () => sessionStorage.getItem("morlaif.apiKey") || "",
  admin: () => sessionStorage.getItem("morlaif.adminKey") || "",
};

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, { method = "GET", body = undefined, admin = false } = {}) {
  const headers = { Accept: "application/json" };
  const key = admin ? keys.admin() || keys.api() : keys.api() || keys.admin();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, "unreachable", `the server did not answer (${e.message})`);
  }
  let data = null;
  try {
    data = await resp.json();
  } catch (e) {
    data = null;
  }
  if (!resp.ok) {
    const err = (data && data.error) || {};
    const message = err.message || resp.statusText || "request failed";
    throw new ApiError(resp.status, err.code || `http_${resp.status}`, message);
  }
  return data;
}

function describe(e) {
  if (!(e instanceof ApiError)) return String(e && e.message ? e.message : e);
  if (e.status === 0) return e.message;
  let hint = "";
  if (e.code === "invalid_api_key") hint = " Enter the API key above and press “Use keys”.";
  if (e.code === "invalid_admin_key") hint = " Enter the admin key above to load or unload principles.";
  if (e.status === 429) hint = " The server is busy; try again in a moment.";
  return `${e.status} ${e.code}: ${e.message}.${hint}`.replace("..", ".");
}

function showError(e) {
  $("#error-text").textContent = describe(e);
  $("#error").hidden = false;
}
function clearError() {
  $("#error").hidden = true;
  $("#error-text").textContent = "";
}

// ----------------------------------------------------------------------------------------- keys
function initKeys() {
  $("#api-key").value = keys.api();
  $("#admin-key").value = keys.admin();
  updateKeyState();
  $("#keys").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const a = $("#api-key").value.trim();
    const b = $("#admin-key").value.trim();
    a ? sessionStorage.setItem("morlaif.apiKey", a) : sessionStorage.removeItem("morlaif.apiKey");
    b ? sessionStorage.setItem("morlaif.adminKey", b) : sessionStorage.removeItem("morlaif.adminKey");
    updateKeyState();
    clearError();
    loadAll();
  });
  $("#forget-keys").addEventListener("click", () => {
    sessionStorage.removeItem("morlaif.apiKey");
    sessionStorage.removeItem("morlaif.adminKey");
    $("#api-key").value = "";
    $("#admin-key").value = "";
    updateKeyState();
  });
}
function updateKeyState() {
  const parts = [];
  if (keys.api()) parts.push("API key set");
  if (keys.admin()) parts.push("admin key set");
  $("#key-state").textContent = parts.length ? parts.join(", ") + " (this tab only)" : "no key";
}

// ----------------------------------------------------------------------------------------- tabs
function initTabs() {
  for (const b of document.querySelectorAll(".tab")) {
    b.addEventListener("click", () => {
      for (const o of document.querySelectorAll(".tab")) o.classList.toggle("active", o === b);
      for (const p of document.querySelectorAll(".tab-panel")) p.hidden = p.id !== `tab-${b.dataset.tab}`;
      if (b.dataset.tab === "live") startLive();
      else stopLive();
    });
  }
}

// ---------------------------------------------------------------------------------- principles
async function loadAll() {
  try {
    const [pr, sc] = await Promise.all([api("/v1/principles"), api("/v1/scalarizers")]);
    state.principles = pr.principles;
    $("#base").textContent = `base ${pr.base_model}`;
    $("#base-info").textContent = `base model ${pr.base_model} (config ${pr.base_config_hash.slice(0, 12)})`;
    state.scalarizers = Object.fromEntries(sc.scalarizers.map((s) => [s.name, s]));
    state.serverDefault = sc.default;
    renderScalarizerPicker();
    applySpec(sc.default, false);
    renderAdapters();
    if (state.last) rescalarize();
  } catch (e) {
    showError(e);
  }
}

// ------------------------------------------------------------------------------------- scoring
function addResponse(text = "") {
  const n = document.querySelectorAll(".response").length;
  const label = String.fromCharCode(65 + n);
  const wrap = el("div", { class: "response-wrap" });
  wrap.append(el("label", { text: `Response ${label}` }));
  wrap.append(el("textarea", { class: "response", rows: 3, value: text, "data-label": label }));
  $("#responses").append(wrap);
}

function initScore() {
  const sel = $("#example");
  EXAMPLES.forEach((x, i) => sel.append(el("option", { value: String(i), text: x.name })));
  sel.addEventListener("change", () => {
    if (sel.value === "") return;
    const x = EXAMPLES[Number(sel.value)];
    $("#prompt").value = x.prompt;
    $("#responses").replaceChildren();
    x.responses.forEach((r) => addResponse(r));
  });
  addResponse();
  addResponse();
  $("#add-response").addEventListener("click", () => {
    if (document.querySelectorAll(".response").length < 8) addResponse();
  });
  $("#remove-response").addEventListener("click", () => {
    const all = document.querySelectorAll(".response-wrap");
    if (all.length > 1) all[all.length - 1].remove();
  });
  $("#score-btn").addEventListener("click", score);
  $("#bar-kind").addEventListener("change", () => state.last && renderResults());
}

async function score() {
  const prompt = $("#prompt").value;
  const items = [...document.querySelectorAll(".response")].map((t) => ({ prompt, response: t.value }));
  const btn = $("#score-btn");
  btn.disabled = true;
  $("#score-state").textContent = "scoring…";
  try {
    const result = await api("/v1/score", { method: "POST", body: { items } });
    clearError();
    state.last = { items, result };
    state.rewards = null;
    renderResults();
    await rescalarize();
    $("#score-state").textContent = `${result.usage.items} responses × ${result.principles.length} principles, ${result.usage.input_tokens} tokens`;
  } catch (e) {
    $("#score-state").textContent = "";
    showError(e);
  } finally {
    btn.disabled = false;
  }
}

function bar(value, scale) {
  const track = el("div", { class: "bar-track" });
  const v = Math.max(-scale, Math.min(scale, value));
  const w = (Math.abs(v) / scale) * 50;
  const b = el("div", { class: `bar ${v >= 0 ? "pos" : "neg"}` });
  b.style.left = v >= 0 ? "50%" : `${50 - w}%`;
  b.style.width = `${w}%`;
  track.append(b);
  return track;
}

function renderResults() {
  const { items, result } = state.last;
  const box = $("#results");
  box.replaceChildren();
  const kind = $("#bar-kind").value; // "scores" (normalised) or "raw_scores"
  const all = result.results.flatMap((r) => result.principles.map((p) => Math.abs(r[kind][p])));
  const scale = Math.max(1, ...all.filter(Number.isFinite));
  result.results.forEach((r, i) => {
    const label = String.fromCharCode(65 + i);
    const card = el("div", { class: "card", "data-item": String(i) });
    const reward = el("span", { class: "reward", text: "…" });
    card.append(el("h3", {}, el("span", { text: `Response ${label}` }), el("span", {}, "reward ", reward)));
    card.append(el("div", { class: "response-text", text: items[i].response || "(empty)" }));
    card.append(
      el("div", { class: "bar-row muted" }, el("span", { text: "principle" }), el("span", { text: `${kind === "scores" ? "normalised" : "raw"} score (±${fmt(scale, 1)})` }), el("span", { text: "norm." }), el("span", { text: "raw" }))
    );
    for (const p of result.principles) {
      const row = el("div", { class: "bar-row", "data-principle": p, "data-score": String(r.scores[p]), "data-raw": String(r.raw_scores[p]), "data-bar": String(r[kind][p]) });
      row.append(el("span", { text: p }), bar(r[kind][p], scale), el("span", { class: "norm", text: fmt(r.scores[p]) }), el("span", { class: "raw", text: fmt(r.raw_scores[p]) }));
      card.append(row);
    }
    box.append(card);
  });
  renderRewards();
}

function renderRewards() {
  const spans = [...document.querySelectorAll("#results .reward")];
  const r = state.rewards;
  spans.forEach((s, i) => {
    s.textContent = r ? fmt(r.values[i]) : "–";
    if (r) {
      s.dataset.value = String(r.values[i]);
      s.dataset.spec = r.spec;
    } else {
      delete s.dataset.value;
      delete s.dataset.spec;
    }
  });
  renderComparison(r ? r.values : null);
}

function renderComparison(rewards) {
  const box = $("#comparison");
  box.replaceChildren();
  const { result } = state.last;
  if (result.results.length !== 2) return;
  const [a, b] = result.results;
  const table = el("table", { id: "pairwise" });
  table.append(el("thead", {}, el("tr", {}, el("th", { text: "P(A better than B)" }), el("th", { text: "score A" }), el("th", { text: "score B" }), el("th", { text: "P(A > B)" }))));
  const body = el("tbody");
  const line = (name, x, y, attrs) => {
    const p = sigmoid(x - y);
    body.append(el("tr", { ...attrs, "data-p": String(p) }, el("td", { text: name }), el("td", { class: "num", text: fmt(x) }), el("td", { class: "num", text: fmt(y) }), el("td", { class: "num", text: fmt(p) })));
  };
  for (const p of result.principles) line(p, a.scores[p], b.scores[p], { "data-principle": p });
  if (rewards) line("scalarized reward", rewards[0], rewards[1], { "data-reward": "1" });
  table.append(body);
  box.append(el("h2", { text: "A against B" }), table);
}

// ------------------------------------------------------------------------------------- weights
function renderScalarizerPicker() {
  const sel = $("#scalarizer");
  sel.replaceChildren();
  for (const s of Object.values(state.scalarizers)) {
    sel.append(el("option", { value: s.name, text: s.monotone ? s.name : `${s.name} (not monotone)` }));
  }
  sel.onchange = () => {
    state.params = {};
    renderParams();
    specChanged();
  };
}

function renderParams() {
  const info = state.scalarizers[$("#scalarizer").value];
  $("#scalarizer-summary").textContent = info ? info.summary : "";
  const box = $("#params");
  box.replaceChildren();
  if (!info) return;
  for (const [name, dflt] of Object.entries(info.params)) {
    const current = name in state.params ? state.params[name] : dflt;
    const input = el("input", { type: "text", value: current === null ? "" : JSON.stringify(current), placeholder: "default", "data-param": name });
    input.addEventListener("change", () => {
      const raw = input.value.trim();
      if (raw === "") delete state.params[name];
      else {
        try {
          state.params[name] = JSON.parse(raw);
        } catch (e) {
          showError(`parameter ${name}: ${raw} is not a JSON value (a number, a list or an object)`);
          return;
        }
      }
      specChanged();
    });
    box.append(el("div", { class: "param" }, el("label", { text: name }), input));
  }
}

function applySpec(spec, changed = true) {
  const names = state.principles.map((p) => p.name);
  const w = spec && spec.weights;
  state.weights = Object.fromEntries(names.map((n) => [n, w ? (n in w ? w[n] : 0) : 1]));
  state.params = { ...((spec && spec.params) || {}) };
  const sel = $("#scalarizer");
  sel.value = spec && spec.name in state.scalarizers ? spec.name : "linear";
  renderParams();
  renderWeights();
  if (changed) specChanged();
  else renderSpecJson();
}

function renderWeights() {
  const box = $("#weights");
  box.replaceChildren();
  for (const p of state.principles) {
    const v = state.weights[p.name];
    const slider = el("input", { type: "range", min: "0", max: "2", step: "0.05", value: String(v), "data-weight": p.name, title: p.description || p.name });
    const num = el("input", { type: "number", min: "0", step: "0.05", value: String(v), "data-weight-number": p.name });
    const set = (x, from) => {
      if (!Number.isFinite(x) || x < 0) return;
      state.weights[p.name] = x;
      if (from !== slider) slider.value = String(x);
      if (from !== num) num.value = String(x);
      specChanged();
    };
    slider.addEventListener("input", () => set(Number(slider.value), slider));
    num.addEventListener("change", () => set(Number(num.value), num));
    box.append(el("div", { class: "weight" }, el("label", { text: p.name }), slider, num));
  }
}

function currentSpec() {
  return { name: $("#scalarizer").value || "linear", weights: { ...state.weights }, params: { ...state.params } };
}

function renderSpecJson() {
  $("#weights-json").textContent = JSON.stringify(currentSpec(), null, 2);
}

let specTimer = null;
function specChanged() {
  renderSpecJson();
  clearTimeout(specTimer);
  specTimer = setTimeout(rescalarize, 60);
}

async function rescalarize() {
  if (!state.last) return;
  const seq = ++state.rewardSeq;
  const spec = currentSpec();
  const names = state.last.result.principles;
  // weights of principles the last score did not cover (e.g. loaded since) are left out
  const weights = Object.fromEntries(names.map((n) => [n, n in spec.weights ? spec.weights[n] : 0]));
  try {
    const out = await api("/v1/scalarize", {
      method: "POST",
      body: { scores: state.last.result.results.map((r) => r.scores), scalarizer: { ...spec, weights } },
    });
    if (seq !== state.rewardSeq) return; // a newer change is on its way
    clearError();
    state.rewards = { values: out.rewards, spec: JSON.stringify({ ...spec, weights }) };
  } catch (e) {
    if (seq !== state.rewardSeq) return;
    state.rewards = null;
    showError(e);
  }
  renderRewards();
}

function initWeights() {
  $("#copy-weights").addEventListener("click", async () => {
    const text = JSON.stringify(currentSpec(), null, 2);
    try {
      await navigator.clipboard.writeText(text);
      $("#copy-state").textContent = "copied: save it as weights.json";
    } catch (e) {
      const range = document.createRange();
      range.selectNodeContents($("#weights-json"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      $("#copy-state").textContent = "selected below: copy it with Ctrl-C";
    }
  });
  $("#reset-weights").addEventListener("click", () => applySpec(state.serverDefault));
}

// ------------------------------------------------------------------------------------ adapters
function kv(obj) {
  const entries = Object.entries(obj || {});
  if (!entries.length) return "–";
  return entries.map(([k, v]) => `${k}: ${typeof v === "number" ? fmt(v) : JSON.stringify(v)}`).join("\n");
}

function renderAdapters() {
  const body = $("#adapters-table tbody");
  body.replaceChildren();
  for (const p of state.principles) {
    const prov = el("details", {}, el("summary", { text: Object.keys(p.provenance || {}).length ? "show" : "none" }), el("pre", { text: JSON.stringify(p.provenance || {}, null, 2) }));
    const admin = el("td");
    if (p.kind !== "rule") {
      const unload = el("button", { type: "button", class: "quiet", text: "Unload", "data-unload": p.name });
      unload.addEventListener("click", () => adminAction(`unload ${p.name}`, `/v1/adapters/${encodeURIComponent(p.name)}`, "DELETE"));
      admin.append(unload);
    }
    body.append(
      el(
        "tr",
        { "data-principle": p.name },
        el("td", {}, el("b", { text: p.name }), el("div", { class: "muted", text: p.description || p.judge_phrase || "" })),
        el("td", { text: p.kind }),
        el("td", { text: p.version }),
        el("td", { class: "num", text: `mean ${fmt(p.calibration.mean)}\nstd ${fmt(p.calibration.std)}` }),
        el("td", {}, el("pre", { text: kv(p.metrics) })),
        el("td", {}, prov),
        admin
      )
    );
  }
}

async function adminAction(what, path, method, body) {
  $("#admin-state").textContent = `${what}…`;
  try {
    const out = await api(path, { method, body, admin: true });
    clearError();
    $("#admin-state").textContent = `${out.action} ${out.principle.name} ${out.principle.version}` + (out.previous_version ? ` (was ${out.previous_version})` : "");
    await loadAll();
  } catch (e) {
    $("#admin-state").textContent = `${what} failed`;
    showError(e);
  }
}

function initAdapters() {
  $("#load-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const body = { name: $("#load-name").value.trim() };
    const version = $("#load-version").value.trim();
    const path = $("#load-path").value.trim();
    if (version) body.version = version;
    if (path) body.path = path;
    adminAction(`load ${body.name}`, "/v1/adapters", "POST", body);
  });
}

// ---------------------------------------------------------------------------------------- live
const SVG = "http://www.w3.org/2000/svg";
const svg = (tag, attrs = {}) => {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
};

function lineChart(title, xs, series, { height = 170, hline = null } = {}) {
  const W = 320, H = height, L = 40, R = 8, T = 8, B = 20;
  const box = el("div", { class: "chart", "data-chart": title });
  box.append(el("h3", { text: title }));
  const vals = series.flatMap((s) => s.ys.filter((y) => y !== null && Number.isFinite(y)));
  if (hline !== null) vals.push(hline);
  if (!xs.length || !vals.length) {
    box.append(el("p", { class: "muted", text: "no data yet" }));
    return box;
  }
  let lo = Math.min(...vals), hi = Math.max(...vals);
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  const x0 = Math.min(...xs), x1 = Math.max(...xs) === x0 ? x0 + 1 : Math.max(...xs);
  const px = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const py = (y) => T + (1 - (y - lo) / (hi - lo)) * (H - T - B);
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img" });
  s.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#9aa3b2" }));
  for (const y of [lo, (lo + hi) / 2, hi]) {
    const t = svg("text", { x: L - 4, y: py(y) + 3, "text-anchor": "end", "font-size": 9, fill: "#667085" });
    t.textContent = fmt(y, 2);
    s.append(t, svg("line", { x1: L, y1: py(y), x2: W - R, y2: py(y), stroke: "#eef0f4" }));
  }
  for (const [x, anchor] of [[x0, "start"], [x1, "end"]]) {
    const t = svg("text", { x: px(x), y: H - 6, "text-anchor": anchor, "font-size": 9, fill: "#667085" });
    t.textContent = `step ${x}`;
    s.append(t);
  }
  if (hline !== null) s.append(svg("line", { x1: L, y1: py(hline), x2: W - R, y2: py(hline), stroke: "#b4443c", "stroke-dasharray": "4 3" }));
  const legend = el("div", { class: "legend" });
  series.forEach((ser, i) => {
    const color = ser.color || COLORS[i % COLORS.length];
    let d = "";
    let pen = false;
    ser.ys.forEach((y, j) => {
      if (y === null || !Number.isFinite(y)) { pen = false; return; }
      d += `${pen ? "L" : "M"}${px(xs[j]).toFixed(1)},${py(y).toFixed(1)}`;
      pen = true;
    });
    s.append(svg("path", { d, fill: "none", stroke: color, "stroke-width": 1.6, "data-series": ser.name }));
    const sw = el("i");
    sw.style.background = color;
    legend.append(el("span", {}, sw, ser.name));
  });
  box.append(s, legend);
  return box;
}

function histogram(h) {
  const box = el("div", { class: "chart", "data-histogram": h.principle });
  box.append(el("h3", { text: `${h.principle}: ${h.count} scores, mean ${fmt(h.mean, 2)}` }));
  const W = 320, H = 90, B = 16;
  const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img" });
  const max = Math.max(1, ...h.counts);
  const n = h.counts.length;
  const bw = W / n;
  h.counts.forEach((c, i) => {
    const bh = (c / max) * (H - B - 4);
    s.append(svg("rect", { x: i * bw + 1, y: H - B - bh, width: bw - 2, height: bh, fill: "#3056d3", "data-count": c }));
    const label = i < h.bounds.length ? `≤${h.bounds[i]}` : `>${h.bounds[h.bounds.length - 1]}`;
    const t = svg("text", { x: i * bw + bw / 2, y: H - 4, "text-anchor": "middle", "font-size": 8, fill: "#667085" });
    t.textContent = label;
    s.append(t);
  });
  box.append(s);
  return box;
}

function statBox(label, value, attr) {
  return el("div", { class: "stat", "data-stat": attr }, el("b", { text: value }), el("span", { class: "muted", text: label }));
}

async function pollStats() {
  try {
    const st = await api("/v1/stats");
    const prev = state.statsPrev;
    state.statsPrev = st;
    let rate = "–", busy = "–";
    if (prev && st.time > prev.time) {
      const dt = st.time - prev.time;
      rate = fmt((st.scores_total - prev.scores_total) / dt, 1);
      busy = `${fmt((100 * (st.forward_seconds - prev.forward_seconds)) / dt, 0)}%`;
    }
    const requests = Object.values(st.requests).reduce((a, b) => a + b, 0);
    const failures = Object.values(st.failures).reduce((a, b) => a + b, 0);
    $("#throughput").replaceChildren(
      statBox("principle-scores / s", rate, "rate"),
      statBox("model busy", busy, "busy"),
      statBox("scores since start", String(st.scores_total), "scores"),
      statBox("scoring requests", String(requests), "requests"),
      statBox("failed requests", String(failures), "failures"),
      statBox("rows queued", String(st.queue_rows), "queue")
    );
    $("#histograms").replaceChildren(...st.principles.map(histogram));
  } catch (e) {
    showError(e);
    stopLive();
  }
}

async function loadRuns() {
  try {
    const out = await api("/v1/runs");
    const sel = $("#run");
    const keep = sel.value;
    sel.replaceChildren(el("option", { value: "", text: out.runs.length ? "(choose a run)" : "(none)" }));
    for (const r of out.runs) sel.append(el("option", { value: r.name, text: `${r.name} (${r.steps} steps)` }));
    if (keep && out.runs.some((r) => r.name === keep)) sel.value = keep;
    $("#runs-state").textContent = out.configured
      ? `${out.runs.length} run(s) in the server's runs directory`
      : "no runs directory: start the server with --runs-dir (MORLAIF_RUNS_DIR) to see PPO runs here";
    if (sel.value) await showRun(sel.value);
  } catch (e) {
    showError(e);
  }
}

async function showRun(name) {
  const charts = $("#run-charts");
  const warnings = $("#run-warnings");
  if (!name) {
    charts.replaceChildren();
    warnings.replaceChildren();
    return;
  }
  try {
    const run = await api(`/v1/runs/${encodeURIComponent(name)}`);
    warnings.replaceChildren(...run.warnings.map((w) => el("li", { text: w })));
    const principles = Object.keys(run.scores);
    charts.replaceChildren(
      lineChart("score per principle", run.steps, principles.map((p) => ({ name: p, ys: run.scores[p] }))),
      lineChart("reward", run.steps, [{ name: "reward", ys: run.reward, color: "#2e7d5b" }]),
      lineChart("KL (nats; dashed: target)", run.steps, [{ name: "KL", ys: run.kl, color: "#b4443c" }], { hline: run.kl_target })
    );
  } catch (e) {
    showError(e);
  }
}

function startLive() {
  if (state.liveTimer) return;
  state.statsPrev = null;
  pollStats();
  loadRuns();
  let n = 0;
  state.liveTimer = setInterval(() => {
    pollStats();
    if (++n % 5 === 0) loadRuns();
  }, 2000);
}
function stopLive() {
  clearInterval(state.liveTimer);
  state.liveTimer = null;
}

// ----------------------------------------------------------------------------------------- init
document.addEventListener("DOMContentLoaded", () => {
  $("#error-close").addEventListener("click", clearError);
  initKeys();
  initTabs();
  initScore();
  initWeights();
  initAdapters();
  $("#run").addEventListener("change", () => showRun($("#run").value));
  loadAll();
});

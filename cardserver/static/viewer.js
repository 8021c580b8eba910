// The viewer shell: pickers, card list, card frame, follow mode and the address bar.
// State comes only from the websocket (flows, runs/<flow>, run/<flow>/<run>); the DOM is
// redrawn from state, once per animation frame.

import { CardList, toRows } from "./cardlist.js";
import { followCard, newestRun, newer } from "./follow.js";
import { Frames } from "./frames.js";
import { cardPath, cardSource, runPath } from "./routes.js";
import { LiveSocket, socketUrl } from "./socket.js";

const $ = (id) => document.getElementById(id);
const view = JSON.parse($("view").textContent);
// Resolve <base> once: pushState must not move the app root.
const ROOT = new URL(document.baseURI);
document.querySelector("base").href = ROOT.href;

const state = {
  flows: [],
  runs: [],
  flow: null,
  run: null,
  summary: null,
  steps: [],
  tasks: new Map(),
  rows: [],
  selected: null,
  want: view.kind === "card" ? `${view.step}/${view.task}/${view.card}` : null,
  follow: view.kind === "follow" || new URLSearchParams(location.search).has("follow"),
};

const list = new CardList($("card-list"), { onPick: (id) => pick(id, { byHand: true }) });
const frames = new Frames($("frames"), { onUpdate: () => {} });
const socket = new LiveSocket(socketUrl(ROOT), { onMessage, onState: showConnection });

const handlers = {
  flows: (m) => { state.flows = m.flows; drawFlowPicker(); chooseRun(); },
  health: (m) => showHealth(m),
  runs: (m) => { state.runs = m.runs; drawRunPicker(); chooseRun(); },
  run: (m) => m.topic.startsWith("runs/") ? runListChanged(m.run) : runChanged(m),
  "run-detail": (m) => runDetail(m),
  task: (m) => { state.tasks.set(`${m.task.step}/${m.task.task}`, m.task); rowsChanged(); },
  "task-removed": (m) => { state.tasks.delete(`${m.step}/${m.task}`); rowsChanged(); },
};

function onMessage(message) {
  const handler = handlers[message.type];
  if (handler && (message.topic === undefined || socket.topics.has(message.topic))) {
    handler(message);
  }
}

// --- which run ----------------------------------------------------------------------------

function chooseRun() {
  if (view.pinned_run) return showRun(view.pinned_flow, view.pinned_run);
  if (state.follow) {
    const newest = newestRun(state.flows, view.pinned_flow || (view.kind === "flow" ? view.flow : null));
    if (newest) showRun(newest.flow, newest.run);
    return;
  }
  if (state.run) return;
  if (view.run) return showRun(view.flow, view.run);
  const newest = newestRun(state.flows, view.flow || view.pinned_flow);
  if (newest) showRun(newest.flow, newest.run);
}

function showRun(flow, run) {
  if (state.flow === flow && state.run === run) return;
  if (state.flow !== flow) {
    if (state.flow) socket.unsubscribe(`runs/${state.flow}`);
    socket.subscribe(`runs/${flow}`);
    state.runs = [];
  }
  if (state.run) socket.unsubscribe(`run/${state.flow}/${state.run}`);
  Object.assign(state, { flow, run, summary: null, steps: [], tasks: new Map(), rows: [] });
  if (!state.want) state.selected = null;
  socket.subscribe(`run/${flow}/${run}`);
  drawFlowPicker();
  drawRunPicker();
  rowsChanged();
  updateAddress();
}

function runListChanged(run) {
  const at = state.runs.findIndex((r) => r.run === run.run);
  if (at >= 0) state.runs[at] = run;
  else state.runs.push(run);
  state.runs.sort((a, b) => (newer(a, b) ? -1 : 1));
  drawRunPicker();
}

function runChanged(message) {
  state.summary = message.run;
  state.steps = message.steps;
  drawSummary();
}

function runDetail(message) {
  if (!message.exists) {
    state.summary = null;
    $("run-summary").textContent = `run ${state.flow}/${state.run} not found (yet)`;
    return;
  }
  state.summary = message.run;
  state.steps = message.steps;
  state.tasks = new Map(message.tasks.map((t) => [`${t.step}/${t.task}`, t]));
  drawSummary();
  rowsChanged();
}

// --- which card ---------------------------------------------------------------------------

// One collator for every comparison: `localeCompare` with options builds one per call, which
// made sorting a 10,000-task run a long task on its own (bench/scale.py).
const byTaskId = new Intl.Collator(undefined, { numeric: true }).compare;

let rowsFrame = 0;
function rowsChanged() {
  if (rowsFrame) return;
  rowsFrame = requestAnimationFrame(() => {
    rowsFrame = 0;
    const order = new Map(state.steps.map((s, i) => [s, i]));
    const tasks = [...state.tasks.values()].sort((a, b) =>
      (order.get(a.step) ?? 1e9) - (order.get(b.step) ?? 1e9) ||
      byTaskId(a.task, b.task));
    state.rows = toRows(tasks);
    list.setRows(state.rows);
    drawStepFilter();
    $("task-count").textContent = `${state.tasks.size} tasks · ${state.rows.filter((r) => r.card).length} cards`;
    if (state.want && state.rows.some((r) => r.id === state.want)) {
      const wanted = state.want;
      state.want = null;
      pick(wanted, { byHand: false });
    } else if (state.follow) {
      const id = followCard(state.rows, state.selected);
      if (id && id !== state.selected) pick(id, { byHand: false });
    }
    drawCardBar();
  });
}

function pick(id, { byHand }) {
  const row = state.rows.find((r) => r.id === id);
  if (!row || !row.card) return;
  if (byHand && state.follow) setFollow(false);
  state.selected = id;
  list.select(id);
  $("empty").hidden = true;
  frames.show(new URL(`${cardSource(state.flow, state.run, { ...row, name: row.card.name })}?embed=viewer`, ROOT).href);
  drawCardBar();
  updateAddress(byHand);
}

function selectedRow() {
  return state.rows.find((r) => r.id === state.selected) || null;
}

// --- follow -------------------------------------------------------------------------------

function setFollow(on) {
  state.follow = on;
  $("follow").setAttribute("aria-pressed", String(on));
  if (on) {
    chooseRun();
    rowsChanged();
  }
  updateAddress();
}

$("follow").addEventListener("click", () => setFollow(!state.follow));
$("follow").setAttribute("aria-pressed", String(state.follow));

// --- address bar --------------------------------------------------------------------------

function updateAddress(push = false) {
  if (!state.flow || !state.run) return;
  const row = selectedRow();
  let path = row ? cardPath(state.flow, state.run, { ...row, name: row.card.name })
    : runPath(state.flow, state.run);
  if (state.follow && !view.pinned_run) path += "?follow";
  const url = new URL(path, ROOT).href;
  if (url === location.href) return;
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
  document.title = row ? `${row.step}/${row.task} · ${state.flow}/${state.run}` : `${state.flow}/${state.run}`;
}

window.addEventListener("popstate", () => {
  const rel = location.pathname.slice(ROOT.pathname.length).split("/").map(decodeURIComponent);
  if (rel[0] !== "run" || rel.length < 3) return;
  state.follow = new URLSearchParams(location.search).has("follow");
  $("follow").setAttribute("aria-pressed", String(state.follow));
  state.want = rel.length === 6 ? rel.slice(3).join("/") : null;
  showRun(rel[1], rel[2]);
  rowsChanged();
});

// --- drawing ------------------------------------------------------------------------------

function option(value, text, selected) {
  const node = document.createElement("option");
  node.value = value;
  node.textContent = text;
  node.selected = selected;
  return node;
}

function when(seconds) {
  const date = new Date(seconds * 1000);
  if (!seconds || Number.isNaN(date.getTime())) return "";  // no time, or one no date can hold
  const today = new Date().toDateString() === date.toDateString();
  return today ? date.toLocaleTimeString() : date.toLocaleString();
}

function drawFlowPicker() {
  const names = state.flows.map((f) => f.flow);
  if (state.flow && !names.includes(state.flow)) names.push(state.flow);
  $("flow-picker").replaceChildren(...names.map((n) => option(n, n, n === state.flow)));
}

function drawRunPicker() {
  const runs = state.runs.length ? state.runs : state.summary ? [state.summary] : [];
  $("run-picker").replaceChildren(...runs.map((r) =>
    option(r.run, `${r.run} · ${r.status} · ${when(r.started)}${r.user ? ` · ${r.user}` : ""}`,
      r.run === state.run)));
}

function drawSummary() {
  const s = state.summary;
  if (!s) return;
  $("run-status").textContent = s.status;
  $("run-status").dataset.status = s.status;
  const counts = Object.entries(s.counts).map(([k, v]) => `${v} ${k}`).join(" · ");
  const node = $("run-summary");
  node.replaceChildren();
  const title = document.createElement("b");
  title.textContent = `${s.flow}/${s.run}`;
  node.append(title, ` · ${s.status} · started ${when(s.started)}${s.user ? ` by ${s.user}` : ""}`,
    document.createElement("br"), `${counts || "no tasks yet"}`);
  drawRunPicker();
}

function drawStepFilter() {
  const select = $("step-filter");
  const current = select.value;
  const steps = state.steps.length ? state.steps : [...new Set(state.rows.map((r) => r.step))];
  if (select.options.length - 1 === steps.length &&
      steps.every((s, i) => select.options[i + 1].value === s)) return;
  select.replaceChildren(option("", "all steps", !current),
    ...steps.map((s) => option(s, s, s === current)));
}

function drawCardBar() {
  const row = selectedRow();
  const open = $("card-open");
  if (!row) {
    $("card-title").textContent = state.rows.length ? "no card selected" : "no cards yet";
    $("card-status").textContent = "";
    open.hidden = true;
    return;
  }
  $("card-title").textContent = `${row.step}/${row.task} · ${row.card.id || row.card.type}`;
  $("card-status").textContent = row.status;
  $("card-status").dataset.status = row.status;
  open.href = new URL(cardSource(state.flow, state.run, { ...row, name: row.card.name }), ROOT).href;
  open.hidden = false;
}

// The server's file watch failed (it restarts it): updates may be missing meanwhile.
function showHealth(health) {
  const node = $("watch-health");
  node.hidden = health.ok;
  node.textContent = health.ok ? "" : "live updates interrupted: restarting the file watch";
  node.title = health.problem || "";
}

function showConnection(value, failures = 0) {
  const node = $("connection");
  node.dataset.state = value;
  node.textContent = value === "live" ? "live" : "reconnecting…";
  // A socket that never opens while the page loaded: most often a proxy that rewrites Host.
  const hint = value !== "live" && failures >= 3;
  node.title = hint ? `The live connection is refused. Behind a proxy? Start card server with --allow-origin ${location.origin}` : "";
  if (hint && !state.rows.length) {
    $("empty").textContent = `Cannot open the live connection. If this page is reached through a proxy, start the server with --allow-origin ${location.origin}`;
  }
}

// --- controls -----------------------------------------------------------------------------

$("flow-picker").addEventListener("change", (event) => {
  const flow = state.flows.find((f) => f.flow === event.target.value);
  setFollow(false);
  if (flow && flow.newest) showRun(flow.flow, flow.newest.run);
});
$("run-picker").addEventListener("change", (event) => {
  setFollow(false);
  showRun(state.flow, event.target.value);
});
$("step-filter").addEventListener("change", (e) => list.setFilter({ step: e.target.value }));
$("status-filter").addEventListener("change", (e) => list.setFilter({ status: e.target.value }));
$("text-filter").addEventListener("input", (e) => list.setFilter({ text: e.target.value }));
$("toggle-list").addEventListener("click", () => {
  const sidebar = $("sidebar");
  sidebar.hidden = !sidebar.hidden;
  $("toggle-list").setAttribute("aria-expanded", String(!sidebar.hidden));
});
document.addEventListener("keydown", (event) => {
  if (event.target.closest("input, select, textarea") || event.metaKey || event.ctrlKey) return;
  if (event.key === "f") setFollow(!state.follow);
  else if (event.target === document.body && ["j", "k", "ArrowDown", "ArrowUp"].includes(event.key)) {
    list.key(event);
  }
});

socket.subscribe("flows");
if (view.run) showRun(view.flow, view.run);
if (view.kind === "flow") socket.subscribe(`runs/${view.flow}`);

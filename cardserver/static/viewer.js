// The viewer shell: pickers, card list, card frame, follow mode and the address bar.
// State comes only from the websocket (flows, runs/<flow>, run/<flow>/<run>); the DOM is
// redrawn from state, once per animation frame.

import { CardList, toRows } from "./cardlist.js";
import { fitToContent, isFramed } from "./embed.js";
import { followCard, newestRun, newer } from "./follow.js";
import { Deck } from "./deck.js";
import { cardHtml, cardPage, cardPath, cardSource, cardTopic, runPath, taskPath } from "./routes.js";
import { Shells } from "./shells.js";
import { LiveSocket, socketUrl } from "./socket.js";
import { TaskView } from "./taskview.js";

const $ = (id) => document.getElementById(id);
const view = JSON.parse($("viewer").textContent);
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
  want: view.kind === "card" ? `${view.step}/${view.task}/${view.card}`
    : view.kind === "task" ? `${view.step}/${view.task}` : null,
  tab: view.kind === "task" ? "task" : "card", // what the stage shows: the card or the task view
  follow: view.kind === "follow" || new URLSearchParams(location.search).has("follow"),
  cardTopic: null, // the shown card's topic: the viewer's socket follows it for the card frame
  cardRefused: "", // why the server refused that topic, if it did
  connection: { state: "connecting", cause: "" },
};

const list = new CardList($("card-list"), {
  onPick: (id) => pick(id, { byHand: true }),
  onFilter: () => { drawCount(); drawEmpty(); },
});
// Cards kept loaded and hidden besides the shown one (`?keep=N` at load; 0 keeps none and
// loads nothing ahead); up to 3 more are loaded ahead (deck.js). Memory: bench/switching.py.
const KEEP = Math.max(0, Math.min(32, Number(new URLSearchParams(location.search).get("keep") ?? 4) || 0));
// Metaflow's cards open in warm frames (shells.js), one kept ready; none with `?keep=0`.
const shells = KEEP ? new Shells($("frames"), { root: ROOT, sandbox: $("frames").dataset.sandbox }) : null;
const deck = new Deck($("frames"), {
  keep: KEEP,
  shells,
  onHeight: cardHeight,
  onKeep: (topic) => socket.subscribe(topic),
  onDrop: (topic) => socket.unsubscribe(topic),
  onSettled: () => { if (shells) shells.keepReady(); loadAhead(); },
});
const socket = new LiveSocket(socketUrl(ROOT), { onMessage, onState: showConnection });
const taskView = new TaskView($("task-panel"), { root: ROOT, socket,
  onCard: (step, task, name) => pick(`${step}/${task}/${name}`, { byHand: true, tab: "card" }) });

const handlers = {
  flows: (m) => { state.flows = m.flows; drawFlowPicker(); chooseRun(); drawEmpty(); },
  health: (m) => showHealth(m),
  runs: (m) => { state.runs = m.runs; drawRunPicker(); chooseRun(); },
  run: (m) => m.topic.startsWith("runs/") ? runListChanged(m.run) : runChanged(m),
  "run-detail": (m) => runDetail(m),
  task: (m) => { state.tasks.set(`${m.task.step}/${m.task.task}`, m.task); rowsChanged(); },
  "task-removed": (m) => { state.tasks.delete(`${m.step}/${m.task}`); rowsChanged(); },
  "task-detail": (m) => taskView.onMessage(m),
  card: (m) => { deck.card(m.topic, m); if (m.topic === state.cardTopic) refused(""); },
  update: (m) => deck.update(m.topic, m),
  error: (m) => { if (m.topic === state.cardTopic) refused(m.error); },
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
  drawEmpty();
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
    if (state.selected && !state.rows.some((r) => r.id === state.selected)) {
      // The task got its first card (or lost one): stay on the same task.
      const same = wantedRow(state.selected.split("/").slice(0, 2).join("/"));
      state.selected = same ? same.id : null;
      if (same) list.select(same.id, { reveal: false });
    }
    const wanted = state.want && wantedRow(state.want);
    if (wanted) {
      state.want = null;
      pick(wanted.id, { byHand: false, tab: state.tab });
    } else if (state.follow) {
      const id = followCard(state.rows, state.selected);
      if (id && id !== state.selected) pick(id, { byHand: false });
    }
    drawFailureBadge();
    if (!selectedRow()) showTab();
    drawCardBar();
  });
}

// A card row by its id, or a task's first row by `step/task` (the task view's deep link).
function wantedRow(want) {
  return state.rows.find((r) => r.id === want) || state.rows.find((r) => `${r.step}/${r.task}` === want);
}

// Show a row: its card, or its task view (`tab`, and always for a task without a card).
function pick(id, { byHand, tab }) {
  const row = state.rows.find((r) => r.id === id);
  if (!row) return;
  if (byHand && state.follow) setFollow(false);
  state.selected = id;
  if (tab) state.tab = tab;
  if (!row.card) state.tab = "task";
  list.select(id);
  $("empty").hidden = true;
  if (row.card) {
    const topic = rowTopic(row);
    followCardTopic(topic);
    deck.show(topic, cardUrl(row), row.card.version);
  } else {
    followCardTopic(null);
  }
  showTab();
  drawCardBar();
  updateAddress(byHand);
}

// The deck holds the subscription of every card it keeps; this is the one whose refusal we show.
function followCardTopic(topic) {
  if (topic === state.cardTopic) return;
  state.cardTopic = topic;
  state.cardRefused = "";
}

function rowTopic(row) {
  return cardTopic(state.flow, state.run, { ...row, name: row.card.name });
}

// A card's own page, and that page apart from Metaflow's bundle (for a warm frame).
function cardUrl(row) {
  const card = { ...row, name: row.card.name };
  return {
    html: new URL(cardHtml(state.flow, state.run, card), ROOT).href,
    page: new URL(cardPage(state.flow, state.run, card), ROOT).href,
  };
}

// Once nothing loads and the shown card is painted (deck.js), load the card after it (then
// the one before) hidden: the likely next pick with the keyboard is then shown at once.
function loadAhead() {
  if (!KEEP || deck.loading || !state.selected) return;
  const next = list.around(state.selected).find((row) => !deck.has(rowTopic(row)));
  if (next) deck.preload(rowTopic(next), cardUrl(next), next.card.version);
}

// A card row the pointer rests on is the likely next click: load its card ahead. A press
// on a row is a click once the button comes up (~100 ms by hand): load it from the press.
const HOVER_MS = 50;
let hovering = 0;
$("card-list").addEventListener("pointerover", (event) => {
  clearTimeout(hovering);
  const node = event.target.closest(".row[data-card]");
  if (node && KEEP) hovering = setTimeout(() => loadRow(node.dataset.id), HOVER_MS);
});
$("card-list").addEventListener("pointerdown", (event) => {
  const node = event.target.closest(".row[data-card]");
  if (node && KEEP) loadRow(node.dataset.id);
});

function loadRow(id) {
  const row = state.rows.find((r) => r.id === id);
  if (row && row.card) deck.preload(rowTopic(row), cardUrl(row), row.card.version, { now: true });
}

// The card frame is as tall as its card (the stage scrolls); framed, we ask for that much,
// and never less than room for the pickers and a few rows of the card list.
const FRAMED_MIN = 420;
function cardHeight(height) {
  if (isFramed) fitToContent(Math.max(FRAMED_MIN, $("frames").getBoundingClientRect().top + window.scrollY + height));
}
cardHeight(0);

function showTab() {
  const row = selectedRow();
  const task = state.tab === "task" && row !== null;
  $("frames").hidden = task;
  $("task-panel").hidden = !task;
  $("tab-card").setAttribute("aria-selected", String(!task));
  $("tab-task").setAttribute("aria-selected", String(task));
  $("tab-card").disabled = !row || !row.card;
  $("tab-task").disabled = !row;
  if (task) taskView.show(state.flow, state.run, row.step, row.task);
  else taskView.hide();
  showVisible();
}

// Tell the server which card is on screen: none while the task view is, or while the browser
// tab is hidden. The cards the deck only keeps then cost the S3 source a GET every few seconds.
function showVisible() {
  socket.visible(!document.hidden && !$("frames").hidden ? state.cardTopic : null);
}
document.addEventListener("visibilitychange", showVisible);

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
  let path = !row ? runPath(state.flow, state.run)
    : state.tab === "task" || !row.card ? taskPath(state.flow, state.run, row)
      : cardPath(state.flow, state.run, { ...row, name: row.card.name });
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
  state.want = rel.length === 6 || rel.length === 5 ? rel.slice(3).join("/") : null;
  if (state.want) state.tab = rel.length === 5 ? "task" : "card";
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

// "3 of 10,002 tasks · 3 of 10,002 cards match" while a filter is typed.
function drawCount() {
  const cards = state.rows.filter((r) => r.card).length;
  let text = `${state.tasks.size} tasks · ${cards} cards`;
  if (list.filtered) {
    const shown = list.visible;
    const tasks = new Set(shown.map((r) => `${r.step}/${r.task}`)).size;
    text = `${tasks} of ${state.tasks.size} tasks · ${shown.filter((r) => r.card).length} of ${cards} cards match`;
  }
  $("task-count").textContent = text;
}

// What the stage says while no card is shown: what is true, and what to do.
let datastore = null;  // from api/status, asked once when there is no flow to show
function drawEmpty() {
  const node = $("empty");
  if (state.selected || node.dataset.hint === "refused") return;
  node.textContent = emptyText();
}

function emptyText() {
  const s = state.summary;
  if (!state.flows.length && !state.run) {
    if (datastore === null) {
      datastore = fetch("api/status").then((r) => r.json()).then((status) => {
        datastore = status;
        drawEmpty();
      }).catch(() => { datastore = {}; });
    }
    if (datastore && datastore.watching === "waiting") {
      return `No datastore yet at ${datastore.datastore}: it appears when the first flow runs here. Run a flow with @card.`;
    }
    return "No runs yet. Run a flow with @card and it shows here at once.";
  }
  if (!state.run) return "Choose a flow and a run above.";
  if (!s) return `Loading run ${state.flow}/${state.run}…`;
  const cards = state.rows.filter((r) => r.card).length;
  const live = ["running", "pending"].includes(s.status);
  if (!state.tasks.size) return live ? "This run is starting: no task has begun yet." : "This run has no tasks.";
  if (!cards) {
    return live ? "No card yet in this run: cards appear as its steps with @card start."
      : "This run has no cards. Add @card to a step to see one here.";
  }
  if (list.filtered && !list.visible.some((r) => r.card)) return "No card matches the filter: clear it to see them all.";
  return live ? `No card selected: pick one of ${cards} in the list, or press f to follow the running one.`
    : `The run ${s.status}. No card selected: pick one of its ${cards} cards in the list (↑/↓ moves).`;
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
  $("card-title").textContent = `${row.step}/${row.task} · ${row.card ? row.card.id || row.card.type : "no card"}`;
  $("card-status").textContent = row.status;
  $("card-status").dataset.status = row.status;
  open.hidden = !row.card;
  if (row.card) open.href = new URL(cardSource(state.flow, state.run, { ...row, name: row.card.name }), ROOT).href;
  drawLiveness();
}

// A failure in the shown run is visible at once, whatever is shown: a badge that opens the
// most recently started failed task on its traceback.
function drawFailureBadge() {
  const failed = [...state.tasks.values()].filter((t) => t.status === "failed");
  const badge = $("failure-badge");
  badge.hidden = !failed.length;
  if (!failed.length) return;
  failed.sort((a, b) => (b.started || 0) - (a.started || 0));
  badge.textContent = `✕ ${failed.length} failed`;
  badge.dataset.task = `${failed[0].step}/${failed[0].task}`;
}

$("failure-badge").addEventListener("click", () => {
  const row = wantedRow($("failure-badge").dataset.task);
  if (row) pick(row.id, { byHand: true, tab: "task" });
});
$("tab-card").addEventListener("click", () => { state.tab = "card"; showTab(); updateAddress(true); });
$("tab-task").addEventListener("click", () => { state.tab = "task"; showTab(); updateAddress(true); });
// The card list picks card rows; a task without a card opens its task view.
$("card-list").addEventListener("click", (event) => {
  const row = event.target.closest(".row.nocard");
  if (row) pick(row.dataset.id, { byHand: true, tab: "task" });
});

// The server's file watch or S3 polling failed (it tries again): updates may be late meanwhile.
function showHealth(health) {
  const node = $("watch-health");
  node.hidden = health.ok;
  node.textContent = health.ok ? "" : `live updates interrupted: ${health.problem || "restarting the file watch"}`;
  node.title = health.problem || "";
}

function showConnection(value, cause) {
  state.connection = { state: value, cause };
  const node = $("connection");
  node.dataset.state = value;
  node.textContent = value === "live" ? "live" : "reconnecting…";
  node.title = cause;
  if (value !== "live" && cause && !state.rows.length) {
    $("empty").dataset.hint = "refused";
    $("empty").textContent = `Cannot open the live connection: ${cause}`;
  } else if (value === "live" && $("empty").dataset.hint) {
    delete $("empty").dataset.hint;
    drawEmpty();
  }
  drawLiveness();
}

function refused(why) {
  if (why === state.cardRefused) return;
  state.cardRefused = why;
  drawLiveness();
}

// The shown card's truth: its updates flow through our socket, so they stop when it does.
function drawLiveness() {
  const { state: value, cause } = state.connection;
  const text = value !== "live" && value !== "connecting" ? `updates paused: ${cause || "reconnecting…"}`
    : state.cardRefused ? `updates refused: ${state.cardRefused}` : "";
  const node = $("card-live");
  node.textContent = text;
  node.hidden = !text;
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
  else if (event.key === "t" && selectedRow()) $(state.tab === "task" ? "tab-card" : "tab-task").click();
  else if (event.target === document.body && ["j", "k", "ArrowDown", "ArrowUp"].includes(event.key)) {
    list.key(event);
  }
});

showVisible(); // before any subscription: none is visible until a card is shown
socket.subscribe("flows");
if (view.run) showRun(view.flow, view.run);
if (view.kind === "flow") socket.subscribe(`runs/${view.flow}`);

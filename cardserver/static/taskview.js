// The task view: why a task failed (its traceback first), each attempt's verdict and times,
// the task's metadata, its cards per attempt, and its stdout/stderr. Live: the server pushes
// the task's details on `task/<flow>/<run>/<step>/<task>` whenever its folder changes.
// Everything read from disk is untrusted: it is set with textContent only.

import { LogList } from "./loglist.js";
import { taskTopic } from "./routes.js";

const enc = encodeURIComponent;

export class TaskView {
  constructor(element, { root, socket, onCard }) {
    this.element = element;
    this.root = root;
    this.socket = socket;
    this.onCard = onCard; // (step, task, cardName) -> open that card in the viewer
    this.key = null;
    this.detail = null;
    this.choice = { attempt: null, stream: null };
    const $ = (name) => element.querySelector(`[data-part="${name}"]`);
    this.parts = { title: $("title"), status: $("status"), traceback: $("traceback"), why: $("why"),
      exception: $("exception"), tracebackLines: $("traceback-lines"), attempts: $("attempts"),
      metadata: $("metadata"), attempt: $("attempt"), streams: $("streams"), logInfo: $("log-info") };
    this.log = new LogList($("log"), { fetchPage: (query) => this.fetchPage(query) });
    this.parts.attempt.addEventListener("change", (e) => this.choose({ attempt: Number(e.target.value) }));
    this.parts.streams.addEventListener("click", (e) => {
      const button = e.target.closest("button[data-stream]");
      if (button) this.choose({ stream: button.dataset.stream });
    });
  }

  show(flow, run, step, task) {
    const key = { flow, run, step, task };
    const topic = taskTopic(key);
    if (this.key && taskTopic(this.key) === topic) return;
    this.hide();
    this.key = key;
    this.detail = null;
    this.choice = { attempt: null, stream: null };
    this.byHand = false;
    this.parts.title.textContent = `${step}/${task}`;
    this.parts.status.textContent = "";
    this.parts.traceback.hidden = true;
    this.parts.attempts.replaceChildren();
    this.parts.metadata.replaceChildren();
    this.log.reset();
    this.element.dataset.task = `${step}/${task}`;
    this.socket.subscribe(topic);
  }

  hide() {
    if (this.key) this.socket.unsubscribe(taskTopic(this.key));
    this.key = null;
  }

  onMessage(message) {
    if (!this.key || message.topic !== taskTopic(this.key)) return;
    const before = this.detail === null ? null : this.choice;
    this.detail = message;
    if (!this.byHand) this.choice = defaultChoice(message);
    this.draw();
    this.syncLog(!before || before.attempt !== this.choice.attempt || before.stream !== this.choice.stream);
  }

  choose(change) {
    this.byHand = true; // from now on pushes keep what the user chose
    this.choice = { ...this.choice, ...change };
    this.draw();
    this.syncLog(true);
  }

  // Load the chosen log afresh, or tell it its file's new size (it appends what is new).
  syncLog(fresh) {
    const attempt = (this.detail?.attempts || []).find((a) => a.attempt === this.choice.attempt);
    const size = attempt ? attempt.logs[this.choice.stream] : null;
    const saved = size !== null && size !== undefined;
    const running = attempt?.verdict === "running" || (!attempt && this.detail?.status === "running");
    this.parts.logInfo.textContent = (saved ? bytes(size) : "no log saved yet") +
      (running && !saved ? " · Metaflow saves a local task's logs when it ends" : "");
    if (!saved) { this.log.reset(); return; }
    if (fresh) this.log.load();
    else this.log.grown(size);
  }

  async fetchPage({ tail, before, after }) {
    if (!this.key) return null;
    const { flow, run, step, task } = this.key;
    const query = new URLSearchParams({ stream: this.choice.stream, attempt: String(this.choice.attempt), tail: String(tail) });
    if (before !== undefined) query.set("before", String(before));
    if (after !== undefined) query.set("after", String(after));
    const path = `api/logs/${enc(flow)}/${enc(run)}/${enc(step)}/${enc(task)}?${query}`;
    try {
      const response = await fetch(new URL(path, this.root), { headers: { Accept: "application/json" } });
      return response.ok ? await response.json() : null;
    } catch {
      return null;
    }
  }

  // --- drawing ------------------------------------------------------------------------------

  draw() {
    const d = this.detail;
    if (!d) return;
    const status = d.exists === false ? "not found" : d.status || "pending";
    this.parts.status.textContent = status;
    this.parts.status.dataset.status = status;
    this.drawTraceback(d.traceback);
    this.drawAttempts(d.attempts || [], d.earlier_attempts || 0);
    this.drawMetadata(d.metadata || {});
    this.parts.attempt.replaceChildren(...(d.attempts || []).map((a) =>
      option(a.attempt, `attempt ${a.attempt + 1} · ${a.verdict}`, a.attempt === this.choice.attempt)));
    for (const button of this.parts.streams.querySelectorAll("button")) {
      button.setAttribute("aria-pressed", String(button.dataset.stream === this.choice.stream));
    }
  }

  drawTraceback(traceback) {
    this.parts.traceback.hidden = !traceback;
    if (!traceback) return;
    const retried = this.detail.attempts.some((a) => a.attempt > traceback.attempt);
    this.parts.why.textContent = retried ? "An earlier attempt failed:" : "Why it failed:";
    this.parts.exception.textContent = `${traceback.exception} (attempt ${traceback.attempt + 1})`;
    this.parts.tracebackLines.textContent = traceback.lines.map((l) => l.text).join("\n");
    this.parts.tracebackLines.scrollTop = this.parts.tracebackLines.scrollHeight; // the user's frames are last
  }

  drawAttempts(attempts, earlier) {
    const rows = attempts.map((a) => {
      const row = document.createElement("tr");
      const verdict = document.createElement("span");
      verdict.className = "status";
      verdict.dataset.status = a.verdict;
      verdict.textContent = a.verdict;
      const cards = document.createElement("td");
      for (const card of a.cards) {
        const link = document.createElement("button");
        link.className = "linkish";
        link.textContent = card.id || card.type || card.name;
        link.addEventListener("click", () => this.onCard(this.key.step, this.key.task, card.name));
        cards.append(link, " ");
      }
      row.append(cell(`${a.attempt + 1}`), cell(verdict), cell(a.return_code ?? "—"),
        cell(when(a.started)), cell(when(a.finished)), cell(duration(a.duration)), cards);
      row.dataset.verdict = a.verdict;
      return row;
    });
    if (earlier > 0) {  // the server reads a task's newest attempts only
      const note = cell(`${earlier} earlier attempt${earlier === 1 ? "" : "s"} not shown`);
      note.colSpan = 7;
      note.className = "earlier";
      rows.unshift(document.createElement("tr"));
      rows[0].append(note);
    }
    this.parts.attempts.replaceChildren(...rows);
  }

  drawMetadata(meta) {
    const items = [["user", meta.user], ["Metaflow", meta.metaflow_version], ["Python", meta.python_version],
      ["runtime", meta.runtime], ["script", meta.script_name], ["datastore", meta.ds_type],
      ["tags", (meta.tags || []).join(", ")], ["system tags", (meta.system_tags || []).join(", ")]];
    const nodes = [];
    for (const [name, value] of items) {
      if (value === undefined || value === null || value === "") continue;
      const term = document.createElement("dt");
      term.textContent = name;
      const data = document.createElement("dd");
      data.textContent = String(value);
      nodes.push(term, data);
    }
    this.parts.metadata.replaceChildren(...nodes);
  }
}

// A failed task opens on the stderr of the attempt whose traceback is shown; any other on the
// latest attempt's stdout.
function defaultChoice(detail) {
  const attempts = detail.attempts || [];
  const latest = attempts.length ? attempts[attempts.length - 1].attempt : null;
  if (detail.status === "failed" && detail.traceback) return { attempt: detail.traceback.attempt, stream: "stderr" };
  return { attempt: latest, stream: detail.status === "failed" ? "stderr" : "stdout" };
}

function cell(content) {
  const node = document.createElement("td");
  node.append(content instanceof Node ? content : String(content));
  return node;
}

function option(value, text, selected) {
  const node = document.createElement("option");
  node.value = String(value);
  node.textContent = text;
  node.selected = selected;
  return node;
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "—";
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${Math.round(seconds - minutes * 60)} s`;
}

function bytes(size) {
  if (size < 1024) return `${size} B`;
  if (size < 1024 * 1024) return `${(size / 1024).toFixed(1)} KiB`;
  return `${(size / 1024 / 1024).toFixed(1)} MiB`;
}

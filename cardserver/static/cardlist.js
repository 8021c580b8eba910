// The card list: one row per card (a task without a card gets a plain row), filtered by
// step, status and text, rendered virtually so a run of 10,000 tasks stays instant.

const ROW = 30;
const SPARE = 12;

export class CardList {
  constructor(element, { onPick, onFilter }) {
    this.element = element;
    this.onPick = onPick;
    this.onFilter = onFilter;
    this.rows = [];
    this.visible = [];
    this.filter = { step: "", status: "", text: "" };
    this.selected = null;
    this.inner = document.createElement("div");
    this.inner.className = "rows";
    element.append(this.inner);
    this.frame = 0;
    element.addEventListener("scroll", () => this.schedule(), { passive: true });
    element.addEventListener("click", (event) => {
      const row = event.target.closest(".row");
      if (row && row.dataset.card) this.onPick(row.dataset.id);
    });
    element.addEventListener("keydown", (event) => this.key(event));
  }

  setRows(rows) {
    this.rows = rows;
    this.applyFilter();
  }

  setFilter(filter) {
    this.filter = { ...this.filter, ...filter };
    this.applyFilter();
  }

  applyFilter() {
    const { step, status, text } = this.filter;
    const needle = text.trim().toLowerCase();
    this.visible = this.rows.filter((row) =>
      (!step || row.step === step) &&
      (!status || row.status === status) &&
      (!needle || row.search.includes(needle)));
    this.inner.style.height = `${this.visible.length * ROW}px`;
    this.schedule();
    this.onFilter();
  }

  get filtered() {
    const { step, status, text } = this.filter;
    return Boolean(step || status || text.trim());
  }

  select(id, { reveal = true } = {}) {
    this.selected = id;
    if (reveal) this.reveal(id);
    this.schedule();
  }

  reveal(id) {
    const at = this.visible.findIndex((row) => row.id === id);
    if (at < 0) return;
    const top = at * ROW;
    const { scrollTop, clientHeight } = this.element;
    if (top < scrollTop) this.element.scrollTop = top;
    else if (top + ROW > scrollTop + clientHeight) this.element.scrollTop = top + ROW - clientHeight;
  }

  move(step) {
    const cards = this.visible.filter((row) => row.card);
    if (!cards.length) return;
    const at = cards.findIndex((row) => row.id === this.selected);
    const next = at < 0 ? (step > 0 ? 0 : cards.length - 1)
      : Math.max(0, Math.min(cards.length - 1, at + step));
    this.onPick(cards[next].id);
  }

  // The card rows either side of `id` in the list's order: the likely next picks.
  around(id) {
    const cards = this.visible.filter((row) => row.card);
    const at = cards.findIndex((row) => row.id === id);
    return at < 0 ? [] : [cards[at + 1], cards[at - 1]].filter(Boolean);
  }

  key(event) {
    const moves = { ArrowDown: 1, j: 1, ArrowUp: -1, k: -1, PageDown: 10, PageUp: -10,
      Home: -Infinity, End: Infinity };
    if (!(event.key in moves)) return;
    event.preventDefault();
    const step = moves[event.key];
    this.move(Number.isFinite(step) ? step : step > 0 ? 1e9 : -1e9);
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.render(); });
  }

  render() {
    const { scrollTop, clientHeight } = this.element;
    const first = Math.max(0, Math.floor(scrollTop / ROW) - SPARE);
    const last = Math.min(this.visible.length, Math.ceil((scrollTop + clientHeight) / ROW) + SPARE);
    const nodes = [];
    for (let i = first; i < last; i++) nodes.push(this.rowNode(this.visible[i], i));
    this.inner.replaceChildren(...nodes);
    if (this.selected) this.element.setAttribute("aria-activedescendant", domId(this.selected));
  }

  rowNode(row, index) {
    const node = document.createElement("div");
    node.className = row.card ? "row" : "row nocard";
    node.id = domId(row.id);
    node.style.top = `${index * ROW}px`;
    node.dataset.id = row.id;
    node.setAttribute("role", "option");
    node.setAttribute("aria-selected", String(row.id === this.selected));
    if (row.card) node.dataset.card = row.card.name;
    const dot = document.createElement("span");
    dot.className = "dot";
    dot.dataset.status = row.status;
    dot.title = row.status;
    const where = document.createElement("span");
    where.className = "where";
    where.textContent = `${row.step}/${row.task}`;
    const what = document.createElement("span");
    what.className = "what";
    what.textContent = row.card ? row.card.id || row.card.type || row.card.name : "no card";
    node.append(dot, where, what);
    if (row.attempts > 1) {  // a retried task: say which attempt each row is
      const attempt = document.createElement("span");
      attempt.className = "attempt";
      if (row.attempt == null) {  // S3 alone does not say which attempt wrote a card
        attempt.textContent = "attempt unknown";
        attempt.title = "The datastore does not say which attempt wrote this card";
      } else {
        attempt.textContent = `attempt ${row.attempt + 1}`;
      }
      node.append(attempt);
    }
    return node;
  }
}

function domId(id) {
  return `row-${id.replace(/[^A-Za-z0-9_-]/g, "_")}`;
}

// Tasks (in run order) -> rows. Plain literals, no spreads: this runs over every task of a run.
export function toRows(tasks) {
  const rows = [];
  for (const task of tasks) {
    const where = `${task.step}/${task.task}`;
    if (!task.cards.length) rows.push(taskRow(task, where, null, where.toLowerCase()));
    for (const card of task.cards) {
      rows.push(taskRow(task, `${where}/${card.name}`, card, `${where} ${card.name}`.toLowerCase()));
    }
  }
  return rows;
}

function taskRow(task, id, card, search) {
  const attempt = card ? card.attempt : task.attempt;
  return { step: task.step, task: task.task, status: task.status, attempt,
    attempts: (task.attempt ?? 0) + 1, started: task.started, id, card, search };
}

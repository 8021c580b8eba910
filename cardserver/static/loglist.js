// A task's log, rendered virtually (a log can hold millions of lines): the tail is loaded
// first, earlier pages are fetched by byte offset when the top is reached, and lines written
// later are appended. Every line is untrusted text: it only ever goes through textContent.

const ROW = 18;
const SPARE = 20;
const PAGE = 2000;
const NEAR_TOP = 40 * ROW;
const FAR = 4 * 1024 * 1024; // more new bytes than this: show the new tail instead

export class LogList {
  constructor(element, { fetchPage }) {
    this.element = element;
    this.fetchPage = fetchPage; // ({tail, before?, after?}) -> page {start, end, size, lines}
    this.inner = document.createElement("div");
    this.inner.className = "log-rows";
    element.append(this.inner);
    this.frame = 0;
    this.generation = 0;
    this.reset();
    element.addEventListener("scroll", () => { this.schedule(); this.maybeEarlier(); }, { passive: true });
  }

  reset() {
    this.inner.replaceChildren(); // a log that is not saved yet shows nothing, not the last one
    this.lines = [];
    this.start = 0;
    this.end = 0;
    this.size = null;
    this.busy = false;
    this.pending = null;
    this.widest = 0;
    this.generation++;
    this.layout();
  }

  // Load the tail afresh (a new stream or attempt, or a log that was rewritten).
  async load() {
    this.reset();
    const generation = this.generation;
    this.busy = true;
    const page = await this.fetchPage({ tail: PAGE });
    if (generation !== this.generation) return;
    this.busy = false;
    if (!page) { this.size = 0; this.layout(); return; }
    this.lines = page.lines;
    Object.assign(this, { start: page.start, end: page.end, size: page.size });
    this.measure(page.lines);
    this.layout();
    this.element.scrollTop = this.element.scrollHeight;
    this.schedule();
    this.settle();
  }

  // The file is now `size` bytes: append what was written since, or reload if it shrank.
  async grown(size) {
    if (size === this.size) return;
    if (this.busy) { this.pending = size; return; }
    if (size < this.end || size - this.end > FAR) return this.load(); // rewritten, or far ahead
    const generation = this.generation;
    const atBottom = this.element.scrollTop + this.element.clientHeight >= this.element.scrollHeight - ROW;
    this.busy = true;
    const page = await this.fetchPage({ tail: PAGE, after: this.end });
    if (generation !== this.generation) return;
    this.busy = false;
    if (!page) return;
    this.lines = this.lines.concat(page.lines);
    Object.assign(this, { end: page.end, size: page.size });
    this.measure(page.lines);
    this.layout();
    if (atBottom) this.element.scrollTop = this.element.scrollHeight;
    this.schedule();
    this.settle();
    if (page.end < page.size) { // more than one page was written: fetch the next one
      this.size = page.end;
      this.grown(page.size);
    }
  }

  async maybeEarlier() {
    if (this.busy || this.start <= 0 || this.element.scrollTop > NEAR_TOP) return;
    const generation = this.generation;
    this.busy = true;
    const page = await this.fetchPage({ tail: PAGE, before: this.start });
    if (generation !== this.generation) return;
    this.busy = false;
    if (!page || page.end !== this.start) return;
    this.lines = page.lines.concat(this.lines);
    this.start = page.start;
    this.measure(page.lines);
    this.layout();
    this.element.scrollTop += page.lines.length * ROW; // keep the lines in view where they were
    this.schedule();
    this.settle();
  }

  // A size that came in while a page was loading is applied once it has.
  settle() {
    if (this.pending === null) return;
    const size = this.pending;
    this.pending = null;
    this.grown(size);
  }

  measure(lines) {
    for (const line of lines) {
      const length = (line.text || "").length;
      if (length > this.widest) this.widest = Math.min(length, 4000);
    }
  }

  layout() {
    this.inner.style.height = `${this.lines.length * ROW}px`;
    this.inner.style.width = `calc(${this.widest + 28}ch)`;
    this.element.dataset.lines = String(this.lines.length);
    this.element.dataset.complete = String(this.start === 0 && this.size !== null);
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = 0; this.render(); });
  }

  render() {
    const { scrollTop, clientHeight } = this.element;
    const first = Math.max(0, Math.floor(scrollTop / ROW) - SPARE);
    const last = Math.min(this.lines.length, Math.ceil((scrollTop + clientHeight) / ROW) + SPARE);
    const nodes = [];
    for (let i = first; i < last; i++) nodes.push(lineNode(this.lines[i], i));
    this.inner.replaceChildren(...nodes);
  }
}

function lineNode(line, index) {
  const node = document.createElement("div");
  node.className = "log-line";
  node.style.top = `${index * ROW}px`;
  const ts = document.createElement("span");
  ts.className = "ts";
  ts.textContent = line.ts ? line.ts.slice(11, 23) : "";
  if (line.ts) ts.title = line.ts;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = line.text;
  node.append(ts, text);
  return node;
}

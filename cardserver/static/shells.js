// The viewer opens Metaflow's cards in warm frames: a sandboxed page of ours, named by the
// card bundle it holds (`card-shell/<sha256>.js`), that has Metaflow's ~1 MB bundle compiled
// as a function, not run (card-shell.js). Given a card's page apart from that bundle
// (`api/cards/.../page`), it writes the page into itself and runs the bundle where the page
// had it. Every warm frame of a bundle has the same URL and source, so Chromium compiles the
// bundle once for them all, and the frame loads by navigation, which a proxy in front of us
// (Jupyter's) lets through with the viewer's cookie, where a sandboxed page's own requests
// carry none. One warm frame is kept ready, so a card wanted now (picked, pressed, hovered)
// skips the navigation and the parse: a first visit takes half the time (bench/switching.py).
// Each frame takes one card only: a card never runs in a document another card has run in.
// A page not in Metaflow's shape, or a warm frame that fails, and the card loads from its URL.
// A warm frame is warm when its document says hello with the frame's secret (framelink.js):
// the page is posted over that document's channel, never to the frame, so a frame navigated
// elsewhere meanwhile is given nothing (and, having loaded another document, is dropped).

import { cardFrame, linkOf, removeFrame } from "./framelink.js";

const WARM_LIMIT_MS = 10000; // a frame that has not said it is warm by then is dropped
const WARM_GRACE_MS = 1000; // after its own load: a frame that loaded an error is not warm

export class Shells {
  constructor(container, { root, sandbox }) {
    this.container = container;
    this.root = root;
    this.sandbox = sandbox;
    this.script = null; // the bundle of the newest card page: the frame kept ready is for it
    this.warming = null; // the frame being made ready: { frame, script, warmed }
    this.ready = null; // the frame kept ready: { frame, script }
    this.waiting = new Map(); // window of a frame not warm yet -> its state
    window.addEventListener("message", (event) => this.message(event));
    // A frame kept ready that loads another document is not warm any more.
    this.lost = (frame) => {
      if (this.ready && this.ready.frame === frame) this.ready = null;
      removeFrame(frame);
    };
  }

  // A frame that has been given the card's page; null when the card is to load from its URL.
  // `now`: the card is wanted now, and may take the frame kept ready.
  async open(pageUrl, { now = false } = {}) {
    const page = await fetchPage(pageUrl);
    if (!page) return null;
    this.script = page.script;
    let frame = null;
    if (now && this.ready && this.ready.script === page.script) {
      frame = this.ready.frame;
      this.ready = null;
    } else {
      frame = await this.start(page.script).warmed;
    }
    const link = linkOf(frame);
    if (!frame || !link || link.foreign) return null;
    link.documents += 1; // the page written into it loads as its second document
    link.post({ cardserver: "page", before: page.before, after: page.after });
    return frame;
  }

  // Keep one frame ready for the bundle last met (call when nothing else loads).
  keepReady() {
    if (!this.script || this.warming || (this.ready && this.ready.script === this.script)) return;
    if (this.ready) removeFrame(this.ready.frame);
    this.ready = null;
    const warming = this.warming = this.start(this.script);
    warming.warmed.then((frame) => {
      if (this.warming !== warming) return;
      this.warming = null;
      if (frame) this.ready = { frame, script: warming.script };
    });
  }

  // A new frame for `script`, hidden; `warmed` gives it once warm (and its own load is over,
  // so that its next `load` is the card's), or null if it never is (then it is removed).
  start(script) {
    const frame = cardFrame(new URL(`card-shell/${encodeURIComponent(script)}`, this.root), this.sandbox);
    frame.className = "shell kept incoming"; // hidden like a kept card; loading until warm
    const state = { loaded: false, warm: false, link: linkOf(frame) };
    const warmed = new Promise((resolve) => { state.resolve = resolve; });
    const end = (ok) => {
      if (state.done) return;
      state.done = true;
      clearTimeout(state.timer);
      this.waiting.delete(state.window);
      if (!ok) removeFrame(frame);
      else frame.classList.remove("incoming");
      state.resolve(ok ? frame : null);
    };
    state.settle = () => { if (state.loaded && state.warm) end(true); };
    state.timer = setTimeout(() => end(false), WARM_LIMIT_MS);
    state.link.onForeign = () => (state.done ? this.lost(frame) : end(false));
    frame.addEventListener("load", () => {
      state.loaded = true;
      state.settle();
      if (state.warm) return;
      clearTimeout(state.timer);
      state.timer = setTimeout(() => end(false), WARM_GRACE_MS);
    }, { once: true });
    this.container.append(frame);
    state.window = frame.contentWindow;
    this.waiting.set(state.window, state);
    return { frame, script, warmed };
  }

  message(event) {
    const state = this.waiting.get(event.source);
    if (!state || !state.link.hello(event)) return;
    state.warm = true;
    state.settle();
  }
}

// The card's page apart from its bundle, or null (not Metaflow's shape, or not answered).
async function fetchPage(url) {
  try {
    const response = await fetch(url, { credentials: "same-origin" });
    const page = response.ok ? await response.json() : null;
    return page && typeof page.script === "string" ? page : null;
  } catch {
    return null;
  }
}

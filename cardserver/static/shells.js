// Warm frames for the viewer: a card never shown yet opens in a sandboxed page of ours that
// has Metaflow's ~1 MB card bundle compiled already (card-shell.js), given the card's page
// apart from that bundle (`api/cards/.../page`). That skips the navigation and the bundle's
// parse on the way to the card: a first visit takes half the time (bench/switching.py).
// One warm frame is kept per bundle the viewer has met; each is used for one card only, so a
// card never runs in a document another card has run in. A page not in Metaflow's shape, or no
// warm frame ready, and the card loads from its URL as before.

const WARM_LIMIT_MS = 10000; // a warm frame that has not said so by then is dropped

export class Shells {
  constructor(container, { root, sandbox }) {
    this.container = container;
    this.root = root;
    this.sandbox = sandbox;
    this.script = null; // the bundle of the newest card page: warm frames are for it
    this.warming = null; // { frame, script, loaded, warm }
    this.ready = null; // a warm frame: { frame, script }
    window.addEventListener("message", (event) => this.message(event));
  }

  // The card's page apart from its bundle, and a warm frame that has written it; or null.
  async open(pageUrl) {
    let page;
    try {
      const response = await fetch(pageUrl, { credentials: "same-origin" });
      page = response.ok ? await response.json() : null;
    } catch {
      page = null;
    }
    if (!page || typeof page.script !== "string") return null;
    this.script = page.script;
    const shell = this.ready;
    if (!shell || shell.script !== page.script) return null;
    this.ready = null;
    shell.frame.contentWindow.postMessage({ cardserver: "page", before: page.before, after: page.after }, "*");
    return shell.frame;
  }

  // Have one warm frame ready for the bundle last met (call when nothing else loads).
  warm() {
    if (!this.script || this.warming || (this.ready && this.ready.script === this.script)) return;
    if (this.ready) this.ready.frame.remove();
    this.ready = null;
    const frame = document.createElement("iframe");
    frame.setAttribute("sandbox", this.sandbox);
    frame.setAttribute("title", "card");
    frame.setAttribute("aria-hidden", "true");
    frame.className = "shell kept incoming"; // hidden like a kept card; loading until warm
    frame.src = new URL(`card-shell/${encodeURIComponent(this.script)}`, this.root).href;
    const warming = { frame, script: this.script, loaded: false, warm: false };
    frame.addEventListener("load", () => { warming.loaded = true; this.settle(warming); }, { once: true });
    warming.timer = setTimeout(() => this.drop(warming), WARM_LIMIT_MS);
    this.warming = warming;
    this.container.append(frame);
  }

  // Ready once it said it is warm and its own load is over (so the next `load` is the card's).
  settle(warming) {
    if (this.warming !== warming || !warming.loaded || !warming.warm) return;
    clearTimeout(warming.timer);
    this.warming = null;
    warming.frame.classList.remove("incoming");
    this.ready = { frame: warming.frame, script: warming.script };
  }

  drop(warming) {
    if (this.warming !== warming) return;
    this.warming = null;
    warming.frame.remove();
  }

  message(event) {
    const warming = this.warming;
    if (!warming || event.source !== warming.frame.contentWindow || event.origin !== "null") return;
    if (event.data && event.data.cardserver === "warm") {
      warming.warm = true;
      this.settle(warming);
    }
  }
}

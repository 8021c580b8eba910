// A card's sandboxed frame (no allow-same-origin), hosted by a page of ours that holds the
// socket: the viewer, or the card's own host page. Double-buffered, so that switching cards
// or a card's re-render never shows a blank page. Feed it the card topic's messages: `card`
// (a new version loads the new HTML behind the old and swaps on load) and `update` (posted
// to the card's runtime). We talk only to the document we loaded into a frame, over its
// channel (framelink.js); a frame that loads another document is dropped and the card loaded
// again in a new frame (RELOAD_LIMIT times in a row at most, where none of ours got as far as
// `ready`). From the card we accept only
// `ready`, `height` and `applied`, and nothing it says can make us show or follow another card.
// The viewer keeps some cards loaded but hidden (`hide`): such a card only holds on to its
// newest update, so it costs nothing meanwhile (a card loaded ahead is given the first one as
// part of loading). Shown again (`reveal`), a card behind gets that update first and is made
// visible once it has applied it (or after REVEAL_WAIT_MS): never stale. A card with nothing
// newer to apply (an update of another render is not one) is made visible at once.
// In the viewer, Metaflow's cards open in warm frames (shells.js); a card wanted now takes
// the one kept ready.

import { cardFrame, linkOf, removeFrame } from "./framelink.js";

const MAX_HEIGHT = 100000;
const REVEAL_WAIT_MS = 150;
const RELOAD_LIMIT = 3; // a card whose frames load other documents before ours is left out

export class Frames {
  constructor(container, { onHeight = () => {}, onReady = () => {}, onApplied = () => {},
    onLoad = () => {}, shells = null } = {}) {
    this.container = container;
    this.sandbox = container.dataset.sandbox;
    this.on = { onHeight, onReady, onApplied, onLoad };
    this.shells = shells; // warm frames (shells.js), in the viewer
    this.page = null; // the card's page apart from its bundle, which a warm frame takes
    this.now = false; // wanted now: may take the warm frame kept ready
    this.loads = 0; // the newest load; an older one that finishes late is dropped
    this.reloads = 0; // frames of this card dropped since one of ours said it was ready
    this.pending = false; // getting a warm frame: no frame yet
    this.hidden = false;
    this.seen = false; // shown at least once (else loaded ahead, not yet seen)
    this.waiting = null; // a reveal waiting for the card to apply the update it missed
    this.src = null;
    this.version = null;
    this.latest = null; // the newest update of the shown card, for each frame that loads
    this.current = null;
    this.incoming = null;
    this.listener = (event) => this.message(event);
    window.addEventListener("message", this.listener);
  }

  hide() {
    this.hidden = true;
    this.waiting = null;
    for (const frame of this.frames()) frame.classList.add("kept");
  }

  // Shown again: the newest update it missed first, then visible (`onShown`), then a fresh
  // height, which a hidden frame does not report.
  reveal(onShown = () => {}) {
    if (!this.hidden) return onShown();
    this.hidden = false;
    const behind = this.behind(this.current);
    for (const frame of this.frames()) {
      this.post(frame);
      linkOf(frame).post({ cardserver: "measure" });
    }
    const visible = () => {
      if (this.hidden || this.waiting !== waiting) return;
      this.waiting = null;
      for (const frame of this.frames()) frame.classList.remove("kept");
      this.seen = true;
      onShown();
      if (this.current && this.current.dataset.height) this.on.onHeight(Number(this.current.dataset.height));
    };
    const waiting = behind ? { created_on: this.latest.created_on, visible } : null;
    this.waiting = waiting;
    if (!waiting) return visible();
    setTimeout(visible, REVEAL_WAIT_MS); // a card that never says `applied` is still shown
  }

  // Whether `frame` has not been given the newest update its render would apply (one for
  // another render token is for a new render, which loads as a new frame: no use waiting).
  behind(frame) {
    return Boolean(frame && this.latest && frame.dataset.token === this.latest.token
      && frame.dataset.posted !== String(this.latest.created_on));
  }

  remove() {
    window.removeEventListener("message", this.listener);
    for (const frame of this.frames()) removeFrame(frame);
    this.current = this.incoming = null;
    this.loads += 1;
    this.pending = false;
  }

  frames() {
    return [this.current, this.incoming].filter(Boolean);
  }

  // `page`, in the viewer: the URL of the card's page apart from its bundle, for a warm frame
  // (`now`: the card is wanted now, not merely loaded ahead).
  show(src, version, { page = null, now = false } = {}) {
    if (src === this.src) return;
    this.src = src;
    this.version = version;
    this.page = page;
    this.now = now;
    this.latest = null;
    this.reloads = 0;
    this.load();
  }

  card(message) {
    if (!this.src || !message.exists || !message.card || message.card.version === this.version) return;
    this.version = message.card.version;
    this.load(); // a new render of the HTML: behind the old one, swapped on load
  }

  update(message) {
    if (!this.src) return; // (in the order the server sent them: it orders them by arrival)
    this.latest = { token: message.token, created_on: message.created_on, data: message.data };
    // A card loaded ahead is given its first update (loading includes it), then holds.
    for (const frame of this.frames()) {
      if (!this.hidden || (!this.seen && !frame.dataset.posted)) this.post(frame);
    }
  }

  post(frame) {
    if (frame && this.latest && linkOf(frame).post({ cardserver: "update", update: this.latest })) {
      frame.dataset.posted = String(this.latest.created_on);
    }
  }

  load() {
    const load = ++this.loads;
    const now = this.now || !this.hidden;
    this.now = false; // a card loaded ahead takes the ready frame only if wanted when shown
    if (this.incoming) removeFrame(this.incoming);
    this.incoming = null;
    this.pending = false;
    const url = this.versioned(this.src);
    if (!this.shells || !this.page) return this.attach(this.frame(url), url);
    this.pending = true;
    this.shells.open(this.versioned(this.page), { now }).then((shell) => {
      if (load !== this.loads) return shell && removeFrame(shell); // given a card we let go of
      this.pending = false;
      this.attach(shell || this.frame(url), url);
    });
  }

  versioned(path) {
    const url = new URL(path, document.baseURI);
    if (this.version) url.searchParams.set("v", this.version); // a new render, a new URL
    return url.href;
  }

  frame(url) {
    return cardFrame(url, this.sandbox);
  }

  // `frame` loads the card (`url`, which a warm frame's own address is not): behind the shown
  // one, swapped in when loaded.
  attach(frame, url) {
    frame.className = this.hidden ? "incoming kept" : "incoming";
    frame.dataset.card = url;
    if (this.current && this.current.style.height) frame.style.height = this.current.style.height;
    this.incoming = frame;
    const link = linkOf(frame);
    link.onMessage = (data) => this.fromCard(frame, data);
    link.onForeign = () => this.foreign(frame);
    frame.addEventListener("load", () => {
      if (this.incoming !== frame) return;
      frame.classList.remove("incoming");
      if (this.current) removeFrame(this.current);
      this.current = frame;
      this.incoming = null;
      if (!this.hidden) this.seen = true;
      if (frame.dataset.height && !this.hidden) this.on.onHeight(Number(frame.dataset.height));
      this.on.onLoad();
    });
    if (!frame.isConnected) this.container.append(frame);
  }

  // `frame` loaded a document we did not load into it: it is not this card any more.
  foreign(frame) {
    removeFrame(frame);
    const shown = this.current === frame;
    if (shown) this.current = null;
    if (this.incoming === frame) this.incoming = null;
    else if (!shown) return; // one we had let go of already
    if (!this.incoming && this.reloads++ < RELOAD_LIMIT) this.load(); // (else a newer render loads)
  }

  frameOf(source) {
    return this.frames().find((frame) => source === frame.contentWindow) || null;
  }

  // A window message: only a hello (the channel of the document we loaded) is heard.
  message(event) {
    const frame = this.frameOf(event.source);
    if (frame) linkOf(frame).hello(event);
  }

  // A message over the channel of `frame`'s document.
  fromCard(frame, data) {
    if (data.cardserver === "ready") {
      this.reloads = 0;
      frame.dataset.token = String(data.token);
      this.post(frame); // even hidden: a card loaded ahead is shown with its newest update
      if (frame === (this.incoming || this.current)) this.on.onReady(String(data.token));
    } else if (data.cardserver === "height" && Number.isFinite(data.height) && !this.hidden) {
      const height = Math.max(0, Math.min(MAX_HEIGHT, Math.ceil(data.height)));
      frame.dataset.height = String(height);
      frame.style.height = `${height}px`;
      if (frame === this.current) this.on.onHeight(height);
    } else if (data.cardserver === "applied" && frame === this.current) {
      if (this.waiting && data.created_on >= this.waiting.created_on) this.waiting.visible();
      this.on.onApplied(data.created_on);
    }
  }
}

// The viewer's card frames: the shown card, up to `keep` others recently shown, and up to
// AHEAD loaded ahead of being shown (never shown yet, so they never push a shown card out),
// all loaded but hidden, so that going back to a card, or on to the next one, shows it at
// once instead of parsing its ~1 MB page again. Each card is
// keyed by its topic: the viewer stays subscribed to every card held here (`onKeep`, `onDrop`)
// and routes its messages to it, so a hidden card still loads a new render behind and holds
// its newest update, shown the moment the card is.

import { Frames } from "./frames.js";

const AHEAD = 3; // the next card, the previous one, and a hovered one
const SETTLE_MS = 250; // the longest wait for a paint: follow mode switches cards in a background tab

export class Deck {
  constructor(container, { keep, shells, onHeight, onKeep, onDrop, onSettled }) {
    this.container = container;
    this.keep = keep;
    this.shells = shells;
    this.on = { onHeight, onKeep, onDrop, onSettled };
    this.cards = new Map(); // topic -> Frames, least recently shown first
    this.ahead = new Set(); // topics loaded ahead and not shown yet, oldest first
    this.shown = null;
    this.painting = 0; // the animation frame that waits for the shown card to be painted
    this.paintTimer = 0; // or this timer, whichever comes first
  }

  // `card`: the card's URLs, `html` (its own page) and `page` (that page apart from its bundle).
  show(topic, card, version) {
    const kept = this.cards.get(topic);
    const frames = kept || this.add(topic, card, version, { now: true });
    this.cards.delete(topic);
    this.cards.set(topic, frames);
    this.ahead.delete(topic);
    this.shown = frames;
    frames.reveal(() => { if (frames.current) this.visible(frames); });
    if (kept && kept.current) this.settled();
  }

  // The shown card is on screen: once it is painted, drop what is over budget and let the
  // viewer load ahead (not sooner: on 2 cores, tearing a card's page down or loading the next
  // one would compete with painting the one just picked).
  settled() {
    const done = () => {
      cancelAnimationFrame(this.painting);
      clearTimeout(this.paintTimer);
      this.trim();
      this.on.onSettled();
    };
    cancelAnimationFrame(this.painting);
    clearTimeout(this.paintTimer);
    this.painting = requestAnimationFrame(() => { this.painting = requestAnimationFrame(done); });
    this.paintTimer = setTimeout(done, SETTLE_MS); // a background tab paints no frames
  }

  // `frames` is on screen: hide the card it replaces (kept shown until then: never a blank).
  visible(frames) {
    if (frames !== this.shown) return frames.hide();
    for (const other of this.cards.values()) if (other !== frames && !other.hidden) other.hide();
  }

  // Load a card hidden, ahead of being shown (`now`: likely shown in a moment, so it may take
  // the warm frame kept ready).
  preload(topic, card, version, { now = false } = {}) {
    if (!this.keep || this.cards.has(topic)) return;
    this.add(topic, card, version, { hidden: true, now });
    this.ahead.add(topic);
    this.trim();
  }

  has(topic) {
    return this.cards.has(topic);
  }

  // Whether a card is still loading, shown or not: the viewer loads ahead only when none is.
  get loading() {
    return [...this.cards.values()].some((frames) => frames.incoming || frames.pending);
  }

  card(topic, message) {
    const frames = this.cards.get(topic);
    if (frames) frames.card(message);
  }

  update(topic, message) {
    const frames = this.cards.get(topic);
    if (frames) frames.update(message);
  }

  add(topic, card, version, { hidden = false, now = false } = {}) {
    const frames = new Frames(this.container, {
      shells: this.shells,
      onHeight: (height) => { if (frames === this.shown) this.on.onHeight(height); },
      onLoad: () => {
        if (frames === this.shown && !frames.hidden) this.visible(frames);
        if (frames === this.shown || !this.loading) this.settled();
      },
    });
    if (hidden) frames.hide();
    frames.show(card.html, version, { page: card.page, now });
    this.cards.set(topic, frames);
    this.on.onKeep(topic);
    return frames;
  }

  // Drop the oldest cards loaded ahead beyond AHEAD, and the least recently shown beyond
  // `keep` (never the shown one, nor one still on screen until the shown one has loaded).
  trim() {
    for (const topic of this.ahead) {
      if (this.ahead.size <= AHEAD) break;
      this.drop(topic);
    }
    for (const [topic, frames] of this.cards) {
      if (this.cards.size - this.ahead.size <= this.keep + 1) return;
      if (frames !== this.shown && frames.hidden && !this.ahead.has(topic)) this.drop(topic);
    }
  }

  drop(topic) {
    this.cards.get(topic).remove();
    this.cards.delete(topic);
    this.ahead.delete(topic);
    this.on.onDrop(topic);
  }
}

// Injected into every card's HTML, which runs sandboxed in an opaque origin. It opens no
// connection: the trusted page framing the card (the viewer, or the card's host page) holds
// the socket and posts each update here, over the channel card-link.js opened with it (and
// only with it: a document it did not load into this frame has none). Both ways are checked:
// we take messages in the expected shape, and tell it only our height and render token.
// Contract (Metaflow's card HTML):
//   METAFLOW_RELOAD_TOKEN       which render this page is; "final" is the task's last render
//   metaflow_card_update(data)  merges a data update into the page in place
// An update for another token belongs to a new render: the host swaps in the new HTML.
(() => {
  "use strict";
  if (window.__cardserverRuntime || window.parent === window) return;
  window.__cardserverRuntime = true;
  const host = typeof window.__cardserverLink === "function" ? window.__cardserverLink() : null;
  if (!host) return; // not framed by a page of ours: nobody to talk to
  const MAX_HEIGHT = 100000;
  let reported = -1;

  const tell = (kind, extra) => host.postMessage({ cardserver: kind, ...extra });
  const token = () => String(window.METAFLOW_RELOAD_TOKEN ?? "");

  function apply(update) {
    if (!update || typeof update !== "object" || typeof update.token !== "string") return;
    const { data, created_on: created } = update;
    if (!data || typeof data !== "object") return;
    if (update.token !== token()) return;
    if (typeof window.metaflow_card_update !== "function") return;
    window.metaflow_card_update(data);
    tell("applied", { created_on: created });
    measure();
  }

  // The content's height, not the frame's: the host sizes the frame to it.
  function measure() {
    const doc = document.documentElement;
    const overflow = doc.scrollHeight > doc.clientHeight ? doc.scrollHeight : 0;
    const height = Math.min(MAX_HEIGHT, Math.max(overflow, Math.ceil(doc.getBoundingClientRect().height)));
    if (height === reported) return;
    reported = height;
    tell("height", { height });
  }

  host.onmessage = (event) => {
    const message = event.data;
    if (!message || typeof message !== "object") return;
    if (message.cardserver === "update") apply(message.update);
    else if (message.cardserver === "measure") { reported = -1; measure(); } // shown again
  };

  function ready() {
    const watcher = new ResizeObserver(measure);
    watcher.observe(document.documentElement);
    if (document.body) watcher.observe(document.body);
    measure();
    tell("ready", { token: token() });
  }

  // Once parsed (Metaflow's bundle defines metaflow_card_update inline, before us), not at
  // `load`, which a web font that cannot be fetched in a closed sandbox may hold up.
  if (document.readyState !== "loading") ready();
  else document.addEventListener("DOMContentLoaded", ready, { once: true });
  window.addEventListener("load", measure, { once: true });
})();

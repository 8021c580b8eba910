// A warm card frame (cards.py `shell_page`): sandboxed in an opaque origin like any card, it
// holds Metaflow's card bundle compiled as a function, not run. The viewer that framed it posts
// one card's page apart from its bundle; we write that page into this document, with a call to
// the bundle where the page had it, so the card renders as if loaded from its URL, minus the
// navigation and the bundle's parse. One card per frame: after the page is written, nothing of
// ours listens any more (the card's own runtime, inside the page, takes over).
(() => {
  "use strict";
  const host = window.parent;
  if (host === window) return;
  const CALL = "<script>window.__cardserverBundle();<\/script>";
  let used = false;

  function write(event) {
    const page = event.data;
    if (used || event.source !== host || !page || page.cardserver !== "page") return;
    if (typeof page.before !== "string" || typeof page.after !== "string") return;
    used = true;
    window.removeEventListener("message", write);
    document.open();
    document.write(page.before + CALL + page.after);
    document.close();
  }

  window.addEventListener("message", write);
  // Warm once the bundle below is compiled into its function (not if it failed to).
  window.addEventListener("load", () => {
    if (typeof window.__cardserverBundle === "function") host.postMessage({ cardserver: "warm" }, "*");
  }, { once: true });
})();

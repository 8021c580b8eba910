// A warm card frame (cards.py `shell_page`): sandboxed in an opaque origin like any card, it
// holds Metaflow's card bundle compiled as a function, not run. Once compiled, it opens the
// channel to the viewer that framed it (card-link.js), and the viewer posts one card's page
// apart from its bundle over it; we write that page into this document, with a call to the
// bundle where the page had it, so the card renders as if loaded from its URL, minus the
// navigation and the bundle's parse. One card per frame: after the page is written, nothing of
// ours here listens any more (the card's own runtime, inside the page, takes the channel over).
(() => {
  "use strict";
  if (window.parent === window || typeof window.__cardserverLink !== "function") return;
  const CALL = "<script>window.__cardserverBundle();<\/script>";
  let used = false;

  function write(event) {
    const page = event.data;
    if (used || !page || page.cardserver !== "page") return;
    if (typeof page.before !== "string" || typeof page.after !== "string") return;
    used = true;
    document.open();
    document.write(page.before + CALL + page.after);
    document.close();
  }

  // Warm once the bundle below is compiled into its function (not if it failed to): the hello
  // that opens the channel is what tells the viewer so.
  window.addEventListener("load", () => {
    if (typeof window.__cardserverBundle !== "function") return;
    const host = window.__cardserverLink();
    if (host) host.onmessage = write;
  }, { once: true });
})();

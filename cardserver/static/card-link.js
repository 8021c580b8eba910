// Injected into every card frame's document, before anything else of ours: the one channel
// between this document and the page of ours that framed it (the viewer, or a card's host
// page). That page put a secret of this frame in our URL's fragment; we send it back with one
// end of a new MessageChannel, and from then on the two talk only over that channel, which
// dies with this document. Whoever navigates the frame to a page of its own chooses that
// page's URL, so it never knows the secret, and never gets the channel. A card written into a
// warm frame (card-shell.js) is given the channel that frame's document opened.
(() => {
  "use strict";
  if (typeof window.__cardserverLink === "function" || window.parent === window) return;
  const found = /(?:^#|&)cardserver=([0-9a-f]{32})(?=&|$)/.exec(location.hash);
  const secret = found ? found[1] : null;
  // Out of our URL at once: in a warm frame, before its bundle compiles, so that every warm
  // frame's bundle has one URL, as Chromium's cache of compiled code needs.
  if (secret) history.replaceState(history.state, "", location.href.slice(0, location.href.indexOf("#")));
  let port = null;
  // This document's end of the channel, opened on first call; null when not framed by us.
  window.__cardserverLink = () => {
    if (port || !secret) return port;
    const channel = new MessageChannel();
    window.parent.postMessage({ cardserver: "hello", secret }, "*", [channel.port2]);
    port = channel.port1;
    return port;
  };
})();

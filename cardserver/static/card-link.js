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
  let port = null;
  // This document's end of the channel, opened on first call; null when not framed by us.
  window.__cardserverLink = () => {
    if (port) return port;
    const found = /(?:^#|&)cardserver=([0-9a-f]{32})(?=&|$)/.exec(location.hash);
    if (!found) return null;
    const channel = new MessageChannel();
    window.parent.postMessage({ cardserver: "hello", secret: found[1] }, "*", [channel.port2]);
    port = channel.port1;
    return port;
  };
})();

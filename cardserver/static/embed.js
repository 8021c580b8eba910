// When a page of ours is framed (a notebook output, a workspace panel), it asks for the
// height its content needs, up to a cap, and follows the width it is given. Same origin as
// the framing page (Jupyter through its proxy): we size our frame element directly. Another
// origin: the frame's owner listens for this message (cardserver.jupyter adds the listener).

const framed = window.parent !== window;
const wanted = Number(new URLSearchParams(location.search).get("max_height"));
// A sensible cap: about a screen. Beyond it our page scrolls inside its frame.
const CAP = wanted > 0 ? wanted : Math.max(360, Math.round(screen.availHeight * 0.85));

let asked = -1;

export function fitToContent(height) {
  if (!framed) return;
  const size = Math.max(60, Math.min(CAP, Math.ceil(height)));
  if (size === asked) return;
  asked = size;
  try {
    if (window.frameElement) window.frameElement.style.height = `${size}px`;
  } catch { /* another origin: the message below does it */ }
  window.parent.postMessage({ cardserver: "height", height: size }, "*");
}

export const isFramed = framed;

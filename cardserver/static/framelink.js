// Trust in a card frame is bound to the document we loaded into it, never to the frame. A
// frame's window (`contentWindow`) and its opaque origin ("null") stay the same when anyone
// allowed to navigate the frame loads another page into it: a page that frames ours may, and
// then the frame holds a card of the attacker's choosing. So each frame we make gets a secret
// in its URL's fragment; the document we loaded says it back with a port of its own
// (card-link.js), and we talk to that document only over that port: nothing is ever posted to
// the frame's window. A frame that loads more documents than we loaded into it is no longer
// ours (`onForeign`): its port is closed and its owner drops it.

const links = new WeakMap(); // frame element -> its Link
const SECRET = "cardserver=";

// A sandboxed card frame that will load `url`, with a link of its own.
export function cardFrame(url, sandbox) {
  const frame = document.createElement("iframe");
  frame.setAttribute("sandbox", sandbox);
  frame.setAttribute("title", "card");
  const link = new Link(frame);
  const src = new URL(url, document.baseURI);
  src.hash = SECRET + link.secret; // never sent to the server, and not part of a cache key
  frame.src = src.href;
  return frame;
}

export function linkOf(frame) {
  return (frame && links.get(frame)) || null;
}

// Remove a card frame of ours, closing its port (an open port keeps what it can reach alive).
export function removeFrame(frame) {
  const link = linkOf(frame);
  if (link) link.close();
  frame.remove();
}

class Link {
  constructor(frame) {
    this.frame = frame;
    this.secret = [...crypto.getRandomValues(new Uint8Array(16))]
      .map((byte) => byte.toString(16).padStart(2, "0")).join("");
    this.port = null; // the loaded document's end, once it said the secret back
    this.documents = 1; // documents we load into the frame: a warm frame is written one more
    this.loads = 0;
    this.foreign = false;
    this.onMessage = () => {};
    this.onForeign = () => {};
    links.set(frame, this);
    frame.addEventListener("load", () => {
      this.loads += 1;
      if (this.loads > this.documents) this.lost();
    });
  }

  // A window message from the frame: the document we loaded, if it knows the secret, hands
  // us its port. Only once: a second hello, whoever sends it, is not heard.
  hello(event) {
    const data = event.data;
    if (this.port || this.foreign || event.origin !== "null" || !data || data.cardserver !== "hello"
      || data.secret !== this.secret || event.ports.length !== 1) return false;
    this.port = event.ports[0];
    this.port.onmessage = (message) => {
      if (message.data && typeof message.data === "object") this.onMessage(message.data);
    };
    return true;
  }

  // Whether `message` went to the document we loaded (false before it said hello, or after
  // the frame loaded another).
  post(message) {
    if (!this.port) return false;
    this.port.postMessage(message);
    return true;
  }

  lost() {
    if (this.foreign) return;
    this.foreign = true;
    this.close();
    this.onForeign();
  }

  close() {
    if (this.port) this.port.close();
    this.port = null;
  }
}

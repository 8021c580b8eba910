// The card frame: sandboxed (no allow-same-origin), double-buffered so that switching cards or
// a card's re-render never shows a blank page. The card's runtime tells us (postMessage)
// when its HTML was re-rendered; we load the new one behind the old and swap on load.

export class Frames {
  constructor(container, { onUpdate }) {
    this.container = container;
    this.sandbox = container.dataset.sandbox;
    this.onUpdate = onUpdate;
    this.src = null;
    this.current = null;
    this.incoming = null;
    window.addEventListener("message", (event) => this.message(event));
  }

  show(src) {
    if (src === this.src) return;
    this.src = src;
    this.load();
  }

  clear() {
    this.src = null;
    for (const frame of this.container.querySelectorAll("iframe")) frame.remove();
    this.current = this.incoming = null;
  }

  load() {
    if (this.incoming) this.incoming.remove();
    const frame = document.createElement("iframe");
    frame.setAttribute("sandbox", this.sandbox);
    frame.setAttribute("title", "card");
    frame.className = "incoming";
    frame.src = this.src;
    this.incoming = frame;
    frame.addEventListener("load", () => {
      if (this.incoming !== frame) return;
      frame.classList.remove("incoming");
      if (this.current) this.current.remove();
      this.current = frame;
      this.incoming = null;
    });
    this.container.append(frame);
  }

  message(event) {
    const from = event.source;
    if (!this.current || from !== this.current.contentWindow) return;
    const data = event.data || {};
    if (data.cardserver === "rerender" || data.cardserver === "reload") this.load();
    else if (data.cardserver === "update") this.onUpdate(data);
  }
}

// One websocket per page of ours: subscriptions survive reconnects (backoff, then full
// resync: the server sends each topic's current state again on subscribe). When the socket
// fails, a plain request to the same URL tells why (our own refusal, a proxy's 403, a server
// that is gone), so the page can say it instead of a bare "reconnecting". A page that keeps
// cards hidden names the one it shows (`visible`), again first thing after each reconnect.

export class LiveSocket {
  constructor(url, { onMessage, onState }) {
    this.url = url;
    this.onMessage = onMessage;
    this.onState = onState;
    this.topics = new Set();
    this.shown = undefined; // the card topic named visible (null: none); undefined: never named
    this.retry = 0;
    this.failures = 0;
    this.socket = null;
    this.live = false;
    this.stopped = false;
    this.connect();
  }

  connect() {
    if (this.stopped) return;
    const socket = new WebSocket(this.url);
    this.socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this.live = true;
      this.retry = 0;
      this.failures = 0;
      this.onState("live", "");
      if (this.shown !== undefined) this.send({ op: "visible", topic: this.shown });
      for (const topic of this.topics) this.send({ op: "subscribe", topic });
    };
    socket.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch { return; }
      this.onMessage(message);
    };
    socket.onclose = async (event) => {
      if (this.socket !== socket || this.stopped) return;
      this.socket = null;
      this.live = false;
      this.failures = opened ? 0 : this.failures + 1;
      this.onState("reconnecting", closeReason(event) || (opened ? "the connection dropped" : ""));
      const delay = Math.min(8000, 200 * 2 ** this.retry++) * (0.6 + Math.random() * 0.4);
      setTimeout(() => this.connect(), delay);
      if (opened) return;
      const cause = await whyRefused(this.url);
      if (!this.live && !this.stopped) this.onState("reconnecting", cause);
    };
  }

  stop() {
    this.stopped = true;
    if (this.socket) this.socket.close();
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
    }
  }

  subscribe(topic) {
    if (this.topics.has(topic)) return;
    this.topics.add(topic);
    this.send({ op: "subscribe", topic });
  }

  // The one card topic on screen (null: none): the server may poll the cards only kept slowly.
  visible(topic) {
    if (topic === this.shown) return;
    this.shown = topic;
    this.send({ op: "visible", topic });
  }

  unsubscribe(topic) {
    if (!this.topics.delete(topic)) return;
    this.send({ op: "unsubscribe", topic });
  }
}

function closeReason(event) {
  if (event.code === 1001) return "the server is restarting";
  if (event.code === 4008) return "too slow to keep up: catching up";
  return event.reason || "";
}

// The same URL as a plain request, with the page's own cookies: whoever answers says why.
export async function whyRefused(url) {
  const probe = new URL(url);
  probe.protocol = probe.protocol === "wss:" ? "https:" : "http:";
  let response;
  try {
    response = await fetch(probe, { credentials: "same-origin", redirect: "manual", cache: "no-store" });
  } catch {
    return "the server cannot be reached (stopped?)";
  }
  if (response.type === "opaqueredirect") return "the proxy wants you to sign in again (reload the page)";
  if (!response.headers.has("X-Cardserver")) {
    return response.status >= 500
      ? `the server cannot be reached (the proxy answers ${response.status})`
      : `the proxy refused the connection (HTTP ${response.status})`;
  }
  if (response.status === 426) {
    // Our server is reachable and lets this page in, so the upgrade itself was refused: most
    // often a proxy that rewrites Host, which makes the page's Origin look foreign.
    return `the server refuses the live connection. Behind a proxy? Start card server with --allow-origin ${location.origin}`;
  }
  let error = "";
  try { error = (await response.json()).error || ""; } catch { /* not JSON */ }
  return `the server refused the connection (HTTP ${response.status}${error ? `: ${error}` : ""})`;
}

export function socketUrl(baseURI) {
  const url = new URL("ws", baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

// One websocket per page: subscriptions survive reconnects (backoff, then full resync: the
// server sends each topic's current state again on subscribe).

export class LiveSocket {
  constructor(url, { onMessage, onState }) {
    this.url = url;
    this.onMessage = onMessage;
    this.onState = onState;
    this.topics = new Set();
    this.retry = 0;
    this.socket = null;
    this.connect();
  }

  connect() {
    const socket = new WebSocket(this.url);
    this.socket = socket;
    let opened = false;
    socket.onopen = () => {
      opened = true;
      this.retry = 0;
      this.onState("live");
      for (const topic of this.topics) this.send({ op: "subscribe", topic });
    };
    socket.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch { return; }
      this.onMessage(message);
    };
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.failures = opened ? 0 : (this.failures || 0) + 1;
      this.onState("reconnecting", this.failures);
      const delay = Math.min(8000, 200 * 2 ** this.retry++) * (0.6 + Math.random() * 0.4);
      setTimeout(() => this.connect(), delay);
    };
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

  unsubscribe(topic) {
    if (!this.topics.delete(topic)) return;
    this.send({ op: "unsubscribe", topic });
  }
}

export function socketUrl(baseURI) {
  const url = new URL("ws", baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

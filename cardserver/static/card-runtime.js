// The live runtime injected into every card page. A plain script, not a module: it runs inside
// any card's HTML, in an opaque-origin sandbox, and may follow only its own card (the server
// signed `cap` into the page). Contract (Metaflow's card HTML):
//   METAFLOW_RELOAD_TOKEN       which render this page is; "final" is the task's last render
//   metaflow_card_update(data)  merges a data update into the page in place
// A data update for this page's token is applied in place. A new render of the HTML (a new
// file version) replaces the page: inside the viewer the viewer swaps frames without a blank
// flash; on its own the page reloads itself.
(() => {
  "use strict";
  const config = window.__cardserver;
  if (!config || window.__cardserverRuntime) return;
  const params = new URLSearchParams(location.search);
  const embedded = params.get("embed") === "viewer";
  const state = { socket: null, retry: 0, stopped: false, created: 0, badge: null, timer: 0 };
  window.__cardserverRuntime = state;

  const isFinal = () => window.METAFLOW_RELOAD_TOKEN === "final";

  function socketUrl() {
    const url = new URL(config.socket, location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.search = "";
    url.hash = "";
    return url.href;
  }

  function tellParent(kind, extra) {
    if (window.parent !== window) {
      window.parent.postMessage({ cardserver: kind, topic: config.topic, ...extra }, "*");
    }
  }

  function connect() {
    if (state.stopped) return;
    const socket = new WebSocket(socketUrl());
    state.socket = socket;
    socket.onopen = () => {
      state.retry = 0;
      showBadge(null);
      socket.send(JSON.stringify({ op: "subscribe", topic: config.topic, cap: config.cap }));
    };
    socket.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch { return; }
      if (message.topic === config.topic) handle(message);
    };
    socket.onclose = (event) => {
      state.socket = null;
      if (state.stopped) return;
      if (event.code === 4403) {
        // The server restarted and signs with a new key: a fresh copy of the page has it.
        stop();
        if (!embedded) location.reload();
        else tellParent("reload");
        return;
      }
      showBadge("reconnecting…");
      const delay = Math.min(8000, 200 * 2 ** state.retry++) * (0.6 + Math.random() * 0.4);
      state.timer = setTimeout(connect, delay);
    };
  }

  function stop() {
    state.stopped = true;
    clearTimeout(state.timer);
    if (state.socket) state.socket.close();
  }

  function handle(message) {
    if (message.type === "update") applyUpdate(message);
    else if (message.type === "card" && message.exists && message.card.version !== config.version) {
      rerendered(message.card.version);
    }
  }

  function applyUpdate(update) {
    if (update.created_on && update.created_on < state.created) return; // older than shown
    if (update.token !== window.METAFLOW_RELOAD_TOKEN) return; // for another render: wait for it
    if (typeof window.metaflow_card_update !== "function") return;
    state.created = update.created_on || state.created;
    window.metaflow_card_update(update.data);
    tellParent("update", { created_on: update.created_on });
  }

  function rerendered(version) {
    stop();
    if (embedded) tellParent("rerender", { version });
    else location.reload();
  }

  function showBadge(text) {
    if (embedded) return tellParent("connection", { state: text ? "reconnecting" : "live" });
    if (!text) {
      if (state.badge) state.badge.remove();
      state.badge = null;
      return;
    }
    if (!state.badge) {
      state.badge = document.createElement("div");
      state.badge.setAttribute("role", "status");
      state.badge.style.cssText =
        "position:fixed;right:8px;bottom:8px;z-index:2147483647;padding:2px 8px;" +
        "font:12px system-ui,sans-serif;border-radius:10px;background:#b45309;color:#fff;opacity:.9";
      document.body.appendChild(state.badge);
    }
    state.badge.textContent = text;
  }

  if (!isFinal()) connect();
})();

// A card on its own (a tab, or a notebook's frame): this page of ours holds the socket, held
// to this one card, and hosts the sandboxed card HTML, posting each update into it. It says
// when updates fail, and why.

import { fitToContent } from "./embed.js";
import { Frames } from "./frames.js";
import { LiveSocket, socketUrl } from "./socket.js";

const $ = (id) => document.getElementById(id);
const host = JSON.parse($("card-host").textContent);
const ROOT = new URL(document.baseURI);
document.title = host.title;

const frames = new Frames($("frames"), { onHeight: fitToContent, onReady });
frames.show(new URL(host.html, ROOT).href, host.version);

const url = new URL(socketUrl(ROOT));
url.searchParams.set("card", host.topic.slice("card/".length));
url.searchParams.set("cap", host.cap);
const socket = new LiveSocket(url.href, { onMessage, onState: showLiveness });
socket.subscribe(host.topic);

function onMessage(message) {
  if (message.topic !== host.topic) return;
  if (message.type === "card") frames.card(message);
  else if (message.type === "update") frames.update(message);
  else if (message.type === "error") showLiveness("refused", message.error);
}

function onReady(token) {
  if (token === "final") { // the task's last render: nothing more will come
    socket.stop();
    showLiveness("final", "");
  }
}

function showLiveness(state, cause) {
  const node = $("liveness");
  node.dataset.state = state;
  node.hidden = state === "live" || state === "final";
  node.textContent = state === "refused" ? `updates refused: ${cause}`
    : `updates paused, reconnecting…${cause ? ` ${cause}` : ""}`;
}

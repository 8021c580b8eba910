"""Show a live card, or the whole viewer, inline in a Jupyter notebook.

    from cardserver.jupyter import card, viewer
    card("TrainFlow/1712345/train/3")          # the task's first card, live
    card("TrainFlow/1712345/train/3", id="loss")
    viewer()                                   # the viewer, following the newest run

No IPython import: the returned object has `_repr_html_`, which Jupyter renders. `server` is
where the kernel reaches `card server`; `public` is the same server as the *browser* reaches
it, when they differ (Jupyter's proxy: `public="/proxy/8423/"`). With `token`, the kernel asks
the API for the card's signed link: the frame gets a URL that opens that card only, and never
the token.

The frame shows our own page (the card's host page, or the viewer), which holds the live
connection and runs the card sandboxed inside it. It grows to fit its content, up to
`max_height` (default: about a screen), and scrolls beyond that.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html import escape
from typing import Any

from .config import DEFAULT_PORT

DEFAULT_SERVER = f"http://127.0.0.1:{DEFAULT_PORT}/"
START_HINT = "start it with `card server` in a terminal, in the folder of your .metaflow datastore"

# Sizes the frame from our page's height message when it sits on another origin than the
# notebook (same origin, our page sizes its frame itself). Only that frame's window is heard.
SIZER = """<script>(() => {
  const frame = document.getElementById(%s);
  const cap = %d;
  window.addEventListener("message", (event) => {
    const data = event.data;
    if (!frame || event.source !== frame.contentWindow || !data || data.cardserver !== "height") return;
    if (!Number.isFinite(data.height)) return;
    frame.style.height = Math.max(60, Math.min(cap || 100000, Math.ceil(data.height))) + "px";
  });
})();</script>"""


class CardNotFound(LookupError):
    """The run, task or card asked for does not exist (the message says which)."""


class ServerUnavailable(ConnectionError):
    """No card server answers where the kernel looked, or it refused the kernel."""


@dataclass(frozen=True, slots=True)
class Inline:
    """A frame of one of our pages that Jupyter can display; `src` is also handy on its own."""

    src: str
    max_height: int | None = None

    def _repr_html_(self) -> str:
        frame_id = f"cardserver-{secrets.token_hex(6)}"
        cap = int(self.max_height or 0)
        return (
            f'<iframe id="{frame_id}" src="{escape(self.src)}" width="100%"'
            ' style="display:block;width:100%;height:150px;border:1px solid #ddd;border-radius:4px"'
            '></iframe>' + SIZER % (json.dumps(frame_id), cap)
        )


def card(
    pathspec: str,
    id: str | None = None,
    server: str = DEFAULT_SERVER,
    public: str | None = None,
    token: str | None = None,
    max_height: int | None = None,
) -> Inline:
    """The live card of a task, given Metaflow's pathspec `Flow/run/step/task`."""
    parts = pathspec.strip("/").split("/")
    if len(parts) != 4 or not all(parts):
        raise ValueError(f"a task pathspec is Flow/run/step/task, not {pathspec!r}")
    flow, run, step, task = parts
    server = with_slash(server)
    query = urllib.parse.urlencode({"step": step, "q": task})
    detail = fetch_json(server, f"api/runs/{quote(flow)}/{quote(run)}?{query}", token)
    name = pick_card(detail, f"{flow}/{run}", step, task, id)
    path = "/".join(quote(p) for p in (flow, run, step, task, name))
    # The card's own link, never the token: the card's host page can be framed anywhere.
    link = fetch_json(server, f"api/cards/{path}", token)["link"]
    return Inline(sized(f"{with_slash(public or server)}{link}", max_height), max_height)


def viewer(server: str = DEFAULT_SERVER, public: str | None = None,
           max_height: int | None = None) -> Inline:
    """The whole viewer, following the newest run. It is our own page: it needs no sandbox
    (it frames each card sandboxed itself). It lets only its own origin, and the server's
    `--allow-origin` ones, frame it: a notebook on another origin needs its origin allowed."""
    return Inline(sized(with_slash(public or server), max_height), max_height)


def sized(src: str, max_height: int | None) -> str:
    if not max_height:
        return src
    return f"{src}{'&' if '?' in src else '?'}{urllib.parse.urlencode({'max_height': max_height})}"


def pick_card(detail: dict[str, Any], run: str, step: str, task: str, card_id: str | None) -> str:
    for found in detail.get("tasks", []):
        if found["step"] != step or found["task"] != task:
            continue
        cards = found["cards"]
        for summary in cards:
            if card_id is None or summary["id"] == card_id:
                return str(summary["name"])
        has = ", ".join(describe(c) for c in cards) or "none"
        wanted = "no card" if card_id is None else f"no card with id {card_id!r}"
        raise CardNotFound(f"task {run}/{step}/{task} has {wanted} (its cards: {has})")
    raise CardNotFound(f"run {run} has no task {step}/{task}")


def describe(summary: dict[str, Any]) -> str:
    return f"{summary['type']} id={summary['id']!r}" if summary["id"] else str(summary["type"])


def fetch_json(server: str, path: str, token: str | None) -> dict[str, Any]:
    request = urllib.request.Request(server + path, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            data: dict[str, Any] = json.load(response)
            return data
    except urllib.error.HTTPError as error:
        raise api_error(server, error) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ServerUnavailable(f"no card server at {server} ({reason}): {START_HINT}") from None


def api_error(server: str, error: urllib.error.HTTPError) -> Exception:
    try:
        text = str(json.load(error).get("error", ""))
    except (ValueError, AttributeError):
        text = ""
    if error.code == 401:
        return ServerUnavailable(f"the card server at {server} needs its token: pass token=...")
    if error.code == 403:
        return ServerUnavailable(f"the card server at {server} refused the kernel: {text or 'HTTP 403'}")
    if error.code == 404 and text:
        return CardNotFound(f"{text} on the card server at {server}")
    return ServerUnavailable(f"the card server at {server} answered HTTP {error.code} {text}".rstrip())


def with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")

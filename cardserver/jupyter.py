"""Show a live card, or the whole viewer, inline in a Jupyter notebook.

    from cardserver.jupyter import card, viewer
    card("TrainFlow/1712345/train/3")          # the task's first card, live
    card("TrainFlow/1712345/train/3", id="loss")
    viewer()                                   # the viewer, following the newest run

No IPython import: the returned object has `_repr_html_`, which Jupyter renders. `server` is
where the kernel reaches `card server`; `public` is the same server as the *browser* reaches
it, when they differ (JupyterHub: `public="/user/<name>/proxy/8423/"`). With `token`, the
kernel asks the API for the card's signed link: the frame gets a URL that opens that card
only, and never the token.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import dataclass
from html import escape
from typing import Any

from .config import DEFAULT_PORT
from .web.security import CARD_IFRAME_SANDBOX

DEFAULT_SERVER = f"http://127.0.0.1:{DEFAULT_PORT}/"


class CardNotFound(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class Inline:
    """An iframe Jupyter can display; `src` is also handy on its own."""

    src: str
    height: int = 600
    sandbox: str | None = CARD_IFRAME_SANDBOX

    def _repr_html_(self) -> str:
        sandbox = f' sandbox="{escape(self.sandbox)}"' if self.sandbox else ""
        return (
            f'<iframe src="{escape(self.src)}" width="100%" height="{int(self.height)}"'
            f'{sandbox} style="border:1px solid #ddd;border-radius:4px" loading="lazy"></iframe>'
        )


def card(
    pathspec: str,
    id: str | None = None,
    server: str = DEFAULT_SERVER,
    public: str | None = None,
    token: str | None = None,
    height: int = 600,
) -> Inline:
    """The live card of a task, given Metaflow's pathspec `Flow/run/step/task`."""
    parts = pathspec.strip("/").split("/")
    if len(parts) != 4:
        raise ValueError(f"a task pathspec is Flow/run/step/task, not {pathspec!r}")
    flow, run, step, task = parts
    server = with_slash(server)
    query = urllib.parse.urlencode({"step": step, "q": task})
    detail = fetch_json(f"{server}api/runs/{quote(flow)}/{quote(run)}?{query}", token)
    name = pick_card(detail, step, task, id)
    path = "/".join(quote(p) for p in (flow, run, step, task, name))
    # The card's own link, never the token: the card's script can read its frame's URL.
    link = fetch_json(f"{server}api/cards/{path}", token)["link"]
    return Inline(f"{with_slash(public or server)}{link}", height)


def viewer(server: str = DEFAULT_SERVER, public: str | None = None, height: int = 700) -> Inline:
    """The whole viewer, following the newest run. It is our own page: no sandbox needed."""
    return Inline(with_slash(public or server), height, sandbox=None)


def pick_card(detail: dict[str, Any], step: str, task: str, card_id: str | None) -> str:
    for found in detail.get("tasks", []):
        if found["step"] != step or found["task"] != task:
            continue
        for summary in found["cards"]:
            if card_id is None or summary["id"] == card_id:
                return str(summary["name"])
        ids = [c["id"] or c["type"] for c in found["cards"]]
        raise CardNotFound(f"{step}/{task} has no card with id {card_id!r} (cards: {ids})")
    raise CardNotFound(f"no task {step}/{task} with a card in this run")


def fetch_json(url: str, token: str | None) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            data: dict[str, Any] = json.load(response)
            return data
    except urllib.error.HTTPError as error:
        raise CardNotFound(f"{url}: HTTP {error.code}") from None


def with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")

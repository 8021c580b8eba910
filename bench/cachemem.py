"""Card page caches: big cards in Metaflow's shape fill them, and the server's memory stays bounded.

    python bench/cachemem.py            # 24 cards of 24 MiB, each fetched as card-html and /page
    python bench/cachemem.py --smoke    # 4 cards of 2 MiB, non-zero exit on any error

The reproduction of issue 21's finding 4. A real Metaflow card page is made at bench time
(bench/manycards.py's run, one branch; `--fixture` keeps it), then grown into `--cards` pages
of `--mib` MiB each: its card data (`window.__MF_DATA__[...]`, base64 JSON) gains Image
components with random pixels, as a card with big inline images has, each card its own. Every
page keeps Metaflow's shape (its data script, the shared bundle, the final render's hook), so
the server splits each for the warm frames. The pages go in a run of their own, beside the
real one, one task each.

A `card server` is started on that datastore; its RSS is read once the API lists the run,
then each card is fetched once as `card-html/...` and once as `api/cards/.../page`, both
gzipped, one after another, and RSS is read again (and its peak sampled every 100 ms). The
target: what the server still holds after the fetches grows by at most the caches' byte budget
(`cards.CACHE_BYTES`); the peak is printed too (pages are built two at a time).
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import re
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PeakRSS, report, rss_mb, start_cardserver, verdict
from bench.manycards import FLOW_NAME, many_cards
from cardserver.web.cards import CACHE_BYTES
from cardserver.web.cardscript import split

RUN = "990001"  # the run the grown cards go in
DATA = re.compile(rb'(window\.__MF_DATA__\["[^"]+"\] = ")([A-Za-z0-9+/=]*)(")')
MB = 1e6


def grown(html: bytes, size: int, seed: int) -> bytes:
    """Metaflow's card page `html`, its card data grown with random images to about `size` bytes."""
    found = DATA.search(html)
    if found is None:
        raise SystemExit("the card page holds no card data: not Metaflow's shape")
    data = json.loads(base64.b64decode(found.group(2)))
    section = data["components"][0]["contents"][0]["contents"]
    pixels = random.Random(seed).randbytes(max(0, size - len(html)) * 9 // 16)  # base64, twice
    for at in range(0, len(pixels), 1 << 20):
        image = base64.b64encode(pixels[at : at + (1 << 20)]).decode()
        section.append({"type": "image", "id": f"image_{seed}_{at}", "src": f"data:image/png;base64,{image}",
                        "label": f"image {at >> 20}"})
    encoded = base64.b64encode(json.dumps(data).encode())
    return html[: found.start(2)] + encoded + html[found.end(2) :]


def write_cards(cards_root: Path, html: bytes, count: int, size: int) -> list[str]:
    """`count` grown pages, one task each, in run RUN: their paths below `card-html/`."""
    paths = []
    for n in range(count):
        name = f"blank-{uuid.UUID(int=n + 1).hex}"
        folder = cards_root / FLOW_NAME / "runs" / RUN / "steps" / "branch" / "tasks" / str(n + 1) / "cards"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.html").write_bytes(grown(html, size, n))
        paths.append(f"{FLOW_NAME}/{RUN}/branch/{n + 1}/{name}")
    return paths


def get(port: int, path: str, timeout: float = 120) -> bytes:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/{path}", headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return bytes(answer.read())


def wait_listed(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = json.loads(get(port, f"api/flows/{FLOW_NAME}/runs"))
        if any(r["run"] == RUN for r in runs.get("runs", [])):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the server did not list run {RUN} within {timeout} s")


@dataclass
class Measured:
    before: float = 0.0  # RSS, MB
    after: float = 0.0
    peak: float = 0.0
    received: int = 0  # bytes, gzipped
    took: float = 0.0  # seconds, all fetches


def measure(datastore: Path, paths: list[str]) -> Measured:
    """Each card fetched once whole and once apart, with the server's RSS around the fetches."""
    server = start_cardserver(datastore)
    try:
        wait_listed(server.port)
        found = Measured(before=rss_mb(server.pid))
        peak = PeakRSS(server.pid)
        peak.start()
        started = time.monotonic()
        for path in paths:
            found.received += len(get(server.port, f"card-html/{path}"))
            found.received += len(get(server.port, f"api/cards/{path}/page"))
        found.took = time.monotonic() - started
        time.sleep(0.5)  # nothing runs now: what is still held is kept
        found.after = rss_mb(server.pid)
        peak.stop.set()
        peak.join()
        found.peak = peak.peak
        return found
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="4 cards of 2 MiB")
    parser.add_argument("--cards", type=int, default=24)
    parser.add_argument("--mib", type=float, default=24.0, help="each card's size")
    parser.add_argument("--fixture", help="folder to keep the real Metaflow run in, reused")
    args = parser.parse_args()
    count, size = (4, 2 << 20) if args.smoke else (args.cards, int(args.mib * (1 << 20)))
    errors: list[str] = []
    found = Measured()
    workdir = Path(tempfile.mkdtemp(prefix="cardserver-bench-cachemem-"))
    try:
        datastore = workdir / ".metaflow"
        with many_cards(1, args.fixture) as real:
            html = next(iter(sorted((real / "mf.cards").rglob("cards/blank-*.html")))).read_bytes()
            shutil.copytree(real, datastore, ignore=shutil.ignore_patterns("data"))
        paths = write_cards(datastore / "mf.cards", html, count, size)
        if split(grown(html, size, 0)) is None:
            errors.append("a grown page is not split: not Metaflow's shape")
        found = measure(datastore, paths)
    except Exception as error:  # in the table's errors: a smoke run fails on it
        errors.append(repr(error))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    budget, grew = CACHE_BYTES / MB, found.after - found.before
    title = f"Card page caches{' (smoke)' if args.smoke else ''}: {count} cards of {size / (1 << 20):.0f} MiB"
    rows = [
        ("RSS before the fetches (MB)", found.before, "", ""),
        ("RSS after (MB)", found.after, "", ""),
        ("RSS growth, after - before (MB)", grew, f"<= {budget:.0f} (the budget)", verdict(grew <= budget)),
        ("RSS peak (MB)", found.peak, "", ""),
        ("fetches", 2 * count, "", ""),
        ("bytes received, gzipped (MB)", found.received / MB, "", ""),
        ("time for all fetches (s)", found.took, "", ""),
    ]
    return report(title, rows, errors, args.smoke)


if __name__ == "__main__":
    sys.exit(main())

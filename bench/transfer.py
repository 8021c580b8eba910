"""Transfer: a real ~1.1 MB Metaflow card on the wire, compressed and revalidated.

    python bench/transfer.py            # 20 requests per case
    python bench/transfer.py --smoke    # 3 requests per case, non-zero exit on any error

The card is made at bench time by running a tiny real Metaflow flow with a live
`@card(type="blank")` (bench/realcard.py; nothing is kept). Each request goes over a fresh
raw socket so every byte that crosses the wire is counted: headers and body, with
`Accept-Encoding: gzip` and with `identity`; time to first byte is from the request sent to
the first byte of the answer. A reload sends the ETag back (`If-None-Match`) and must get a
304 with no body. The same card from Metaflow's own `card server` is measured alongside.
"""

from __future__ import annotations

import argparse
import gzip
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import report, start_cardserver, start_metaflow_server, verdict
from bench.realcard import live_card

TARGET_GZIP_RATIO = 0.5  # the compressed card is at most half the identity one


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    wire_bytes: int  # everything received: status line, headers, body
    body: bytes
    ttfb: float  # seconds, request sent -> first byte
    total: float  # seconds, request sent -> last byte
    extra: dict[str, object] = field(default_factory=dict)


def fetch(port: int, path: str, headers: dict[str, str], timeout: float = 30) -> Answer:
    """One GET on a fresh connection; reads to Content-Length, or to the close without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close",
                 *(f"{k}: {v}" for k, v in headers.items()), "", ""]
        began = time.perf_counter()
        sock.sendall("\r\n".join(lines).encode())
        first = sock.recv(65536)
        ttfb = time.perf_counter() - began
        data = bytearray(first)
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError(f"connection closed inside the headers of {path}")
            data += chunk
        head, _, rest = bytes(data).partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        found = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            found[name.strip().lower()] = value.strip()
        status = int(status_line.split()[1])
        body = bytearray(rest)
        length = found.get("content-length")
        if status in (204, 304):
            wanted: int | None = 0
        else:
            wanted = int(length) if length is not None else None
        while wanted is None or len(body) < wanted:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            body += chunk
        total = time.perf_counter() - began
    return Answer(status, found, len(head) + 4 + len(body), bytes(body), ttfb, total)


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def measure(port: int, path: str, repeats: int, label: str, errors: list[str],
            revalidate: bool) -> dict[str, object]:
    identity = [fetch(port, path, {"Accept-Encoding": "identity"}) for _ in range(repeats)]
    gzipped = [fetch(port, path, {"Accept-Encoding": "gzip, deflate, br"}) for _ in range(repeats)]
    out: dict[str, object] = {"identity": identity, "gzip": gzipped}
    for answer in identity + gzipped:
        if answer.status != 200:
            errors.append(f"{label}: {path} answered {answer.status}")
            return out
    plain = identity[-1].body
    packed = gzipped[-1]
    if packed.headers.get("content-encoding") == "gzip" and gzip.decompress(packed.body) != plain:
        errors.append(f"{label}: the gzip body does not unpack to the identity body")
    if revalidate:
        etag = packed.headers.get("etag")
        if etag is None:
            errors.append(f"{label}: no ETag")
            return out
        again = [fetch(port, path, {"Accept-Encoding": "gzip", "If-None-Match": etag})
                 for _ in range(repeats)]
        out["revalidated"] = again
    return out


def run(args: argparse.Namespace) -> tuple[list[list[object]], list[str]]:
    errors: list[str] = []
    with live_card(max_seconds=600) as card:
        html = (card.datastore / "mf.cards").glob(
            f"{card.parts[0]}/runs/{card.parts[1]}/steps/{card.parts[2]}/tasks/{card.parts[3]}/"
            f"cards/{card.parts[4]}.html")
        on_disk = next(iter(html)).stat().st_size
        server = start_cardserver(card.datastore)
        try:
            ours = measure(server.port, f"/card-html/{card.path}", args.repeats, "cardserver", errors,
                           revalidate=True)
        finally:
            server.stop()
        theirs: dict[str, object] | None = None
        if not args.no_metaflow:
            card_hash = card.parts[4].rsplit("-", 1)[1]
            mf_path = f"/card/{'/'.join(card.parts[:4])}/{card_hash}"
            metaflow = start_metaflow_server(card.flow_file, card.run_id, env=card.env, timeout=180)
            try:
                mf_errors: list[str] = []
                theirs = measure(metaflow.port, mf_path, args.repeats, "Metaflow", mf_errors,
                                 revalidate=False)
                if mf_errors:
                    theirs = {"error": mf_errors[0]}
            finally:
                metaflow.stop()

    rows: list[list[object]] = [["card HTML on disk (bytes)", on_disk, "-", "-"]]
    if "revalidated" not in ours:
        return rows, errors
    identity, packed = ours["identity"], ours["gzip"]
    again = ours["revalidated"]
    assert isinstance(identity, list) and isinstance(packed, list) and isinstance(again, list)
    id_bytes, gz_bytes = identity[-1].wire_bytes, packed[-1].wire_bytes
    ratio = gz_bytes / id_bytes
    not_modified = all(a.status == 304 and not a.body for a in again)
    rows += [
        ["identity: bytes on the wire", id_bytes, "-", "-"],
        ["gzip: bytes on the wire", gz_bytes, f"<= {TARGET_GZIP_RATIO:g} x identity",
         verdict(ratio <= TARGET_GZIP_RATIO and packed[-1].headers.get("content-encoding") == "gzip")],
        ["gzip / identity", ratio, "-", "-"],
        ["identity: TTFB first request, builds the page (ms)", identity[0].ttfb * 1000, "-", "-"],
        ["identity: TTFB median (ms)", median_ms([a.ttfb for a in identity]), "-", "-"],
        ["gzip: TTFB median (ms)", median_ms([a.ttfb for a in packed]), "-", "-"],
        ["identity: full body median (ms)", median_ms([a.total for a in identity]), "-", "-"],
        ["gzip: full body median (ms)", median_ms([a.total for a in packed]), "-", "-"],
        ["reload with If-None-Match: status", again[-1].status, "304", verdict(not_modified)],
        ["reload: body bytes", len(again[-1].body), "0", verdict(not_modified)],
        ["reload: bytes on the wire (headers only)", again[-1].wire_bytes, "-", "-"],
        ["reload: TTFB median (ms)", median_ms([a.ttfb for a in again]), "-", "-"],
    ]
    if theirs is None:
        return rows, errors
    if "error" in theirs:
        rows.append(["Metaflow card server", theirs["error"], "-", "-"])
        return rows, errors
    mf_packed = theirs["gzip"]
    assert isinstance(mf_packed, list)
    mf = mf_packed[-1]
    rows += [
        ["Metaflow card server: bytes on the wire (asked for gzip)", mf.wire_bytes, "-", "-"],
        ["Metaflow: Content-Encoding / ETag", f"{mf.headers.get('content-encoding', 'none')} / "
         f"{mf.headers.get('etag', 'none')}", "-", "-"],
        ["Metaflow: TTFB median (ms)", median_ms([a.ttfb for a in mf_packed]), "-", "-"],
        ["Metaflow: full body median (ms)", median_ms([a.total for a in mf_packed]), "-", "-"],
        ["ratio: Metaflow bytes / ours (gzip)", mf.wire_bytes / gz_bytes, "-", "-"],
        ["ratio: Metaflow bytes / ours (reload)", mf.wire_bytes / again[-1].wire_bytes, "-", "-"],
    ]
    return rows, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="3 requests per case, < 60 s")
    parser.add_argument("--repeats", type=int, default=20, help="requests per case")
    parser.add_argument("--no-metaflow", action="store_true", help="skip Metaflow's card server")
    args = parser.parse_args()
    if args.smoke:
        args.repeats = 3
    rows, errors = run(args)
    return report(f"Transfer ({'smoke' if args.smoke else 'full'}): a real Metaflow card, "
                f"{args.repeats} requests per case", rows, errors, args.smoke)


if __name__ == "__main__":
    sys.exit(main())

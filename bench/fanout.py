"""Fan-out: many websocket clients on one live card, plus a few that never read.

    python bench/fanout.py                 # 500 readers + 5 stalled, 20 updates/s for 30 s
    python bench/fanout.py --smoke         # tiny, < 60 s, exits non-zero on any error

The benchmark writes a live card's data update (Metaflow's way: mkstemp + os.replace) with a
sequence number and the write time in it. The clients live in another process (this script
with `--role clients`): readers are plain websockets read off the socket, and each update's
delivery time is the kernel's receive time of its packet (SO_TIMESTAMPNS) minus its write time;
the time until the client process got round to it (behind 499 other readers on the same core)
is printed too. Stalled clients do the same handshake on a socket with a tiny receive buffer,
subscribe, and never read again. We watch their TCP state to see when the server drops them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PeakRSS,
    cpu_seconds,
    machine_busy_seconds,
    percentile,
    report,
    rss_mb,
    start_cardserver,
    verdict,
)
from cardserver.demo import markdown, progress, start_run, text

TARGET_P99_MS = 150.0
TARGET_RSS_GROWTH_MB = 50.0
TCP_ESTABLISHED = 1
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux: kernel receive time, ns


# --- the client process -----------------------------------------------------------------------


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class Reader:
    """What one reading client keeps for the benchmark."""

    def __init__(self) -> None:
        self.last_seq = -1
        self.latencies: list[float] = []  # ms, write -> receive
        self.messages = 0
        self.subscribed = asyncio.Event()
        self.closed_by_server: str | None = None


def handshake(sock: socket.socket, port: int, path: str, who: str) -> None:
    """A plain websocket upgrade on a connected socket; returns once the server said 101."""
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:  # nothing else comes before we subscribe
        chunk = sock.recv(1)
        if not chunk:
            raise RuntimeError(f"{who}: server closed during the handshake")
        head += chunk
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"{who}: handshake refused: {head[:200]!r}")


class RawReader(Reader):
    """A websocket read straight off the socket, with the kernel's receive time of each packet
    (SO_TIMESTAMPNS): the delivery time then excludes this process's own queueing behind the
    other 499 readers, which is the harness, not the server."""

    def __init__(self, port: int, path: str, topic: str) -> None:
        super().__init__()
        self.seen_latencies: list[float] = []  # ms, write -> this process handled it
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        handshake(self.sock, port, path, "reader")
        self.sock.sendall(client_frame(json.dumps({"op": "subscribe", "topic": topic}).encode()))
        self.sock.setblocking(False)
        self.buffer = b""

    def on_readable(self) -> None:
        try:
            data, ancillary, _, _ = self.sock.recvmsg(1 << 16, socket.CMSG_SPACE(16))
        except BlockingIOError:
            return
        except OSError as error:
            self.closed_by_server = f"error {error}"
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            return
        handled = time.time()
        arrived = handled
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanoseconds = struct.unpack("qq", value[:16])
                arrived = seconds + nanoseconds / 1e9
        if not data:
            self.closed_by_server = "closed"
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            return
        self.buffer += data
        for opcode, payload in self.frames():
            self.on_frame(opcode, payload, arrived, handled)

    def frames(self) -> list[tuple[int, bytes]]:
        """Whole server frames (unmasked) from the buffer; a partial one stays for later."""
        out: list[tuple[int, bytes]] = []
        buffer = self.buffer
        while len(buffer) >= 2:
            length, at = buffer[1] & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    break
                length, at = struct.unpack("!H", buffer[2:4])[0], 4
            elif length == 127:
                if len(buffer) < 10:
                    break
                length, at = struct.unpack("!Q", buffer[2:10])[0], 10
            if len(buffer) < at + length:
                break
            out.append((buffer[0] & 0x0F, buffer[at : at + length]))
            buffer = buffer[at + length :]
        self.buffer = buffer
        return out

    def on_frame(self, opcode: int, payload: bytes, arrived: float, handled: float) -> None:
        if opcode == 0x9:  # the server's heartbeat: answer it or be dropped
            self.sock.send(client_frame(payload, 0xA))
            return
        if opcode == 0x8:
            self.closed_by_server = "closed"
            return
        if opcode != 0x1:
            return
        self.messages += 1
        message = json.loads(payload)
        if message.get("type") == "update":
            bench = message["data"]["bench"]
            self.last_seq = max(self.last_seq, bench["seq"])
            if bench["seq"] > 0:
                self.latencies.append((arrived - bench["written"]) * 1000)
                self.seen_latencies.append((handled - bench["written"]) * 1000)
            self.subscribed.set()


class Stalled:
    """A websocket that subscribes and then never reads: a raw socket with a tiny buffer."""

    def __init__(self, port: int, path: str, topic: str, rcvbuf: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        handshake(self.sock, port, path, "stalled client")
        self.sock.sendall(client_frame(json.dumps({"op": "subscribe", "topic": topic}).encode()))
        self.dropped_at: float | None = None

    def state(self) -> int:
        info = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        return info[0]

    def check(self) -> None:
        if self.dropped_at is None and self.state() != TCP_ESTABLISHED:
            self.dropped_at = time.time()


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One masked frame, as a browser sends it (payload < 64 KiB); text unless told."""
    mask = os.urandom(4)
    length = len(payload)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | length]) if length < 126 else
                            bytes([0x80 | 126]) + struct.pack("!H", length))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def clients_main(args: argparse.Namespace) -> None:
    raise_fd_limit(args.readers + args.stalled + 256)
    loop = asyncio.get_running_loop()
    readers: list[RawReader] = []
    for start in range(0, args.readers, 50):  # in waves: the listen backlog is finite
        batch = [RawReader(args.port, "/ws", args.topic) for _ in range(min(50, args.readers - start))]
        for reader in batch:
            loop.add_reader(reader.sock.fileno(), reader.on_readable)
        readers += batch
        await asyncio.wait_for(asyncio.gather(*(r.subscribed.wait() for r in batch)), 30)
    stalled = [Stalled(args.port, "/ws", args.topic, args.rcvbuf) for _ in range(args.stalled)]
    emit({"event": "ready", "readers": len(readers), "stalled": len(stalled)})
    last = await until_last_update(args, readers, stalled)
    for client in stalled:
        client.check()
    latencies = [v for r in readers for v in r.latencies]
    seen = [v for r in readers for v in r.seen_latencies]
    emit({
        "event": "result",
        "readers": len(readers),
        "at_last": sum(1 for r in readers if last is not None and r.last_seq >= last),
        "behind": sorted(r.last_seq for r in readers if last is None or r.last_seq < last)[:10],
        "closed_readers": sum(1 for r in readers if r.closed_by_server),
        "messages": sum(r.messages for r in readers),
        "samples": len(latencies),
        "p50": percentile(latencies, 50),
        "p90": percentile(latencies, 90),
        "p99": percentile(latencies, 99),
        "max": max(latencies, default=float("nan")),
        "seen_p50": percentile(seen, 50),
        "seen_p99": percentile(seen, 99),
        "stalled": len(stalled),
        "stalled_dropped": [client.dropped_at for client in stalled],
    })
    for reader in readers:
        loop.remove_reader(reader.sock.fileno())
        reader.sock.close()
    for client in stalled:
        client.sock.close()


async def until_last_update(
    args: argparse.Namespace, readers: list[RawReader], stalled: list[Stalled]
) -> int | None:
    """Follow the parent's commands until every reader has the last update (or time is up)."""
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def stdin_reader() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, json.loads(line))
        loop.call_soon_threadsafe(commands.put_nowait, {"eof": True})

    threading.Thread(target=stdin_reader, daemon=True).start()
    last: int | None = None
    waited_until: float | None = None
    while True:
        for client in stalled:
            client.check()
        try:
            command = await asyncio.wait_for(commands.get(), 0.2)
        except TimeoutError:
            command = {}
        if command.get("eof"):
            return last
        if "last" in command:
            last = command["last"]
            waited_until = time.monotonic() + args.final_wait
        if waited_until is not None and last is not None and (
            all(r.last_seq >= last for r in readers) or time.monotonic() > waited_until
        ):
            return last


# --- the benchmark ----------------------------------------------------------------------------


def read_event(process: subprocess.Popen[str], kind: str, timeout: float) -> dict[str, Any]:
    assert process.stdout is not None
    result: dict[str, Any] = {}

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            event = json.loads(line)
            if event.get("event") == kind:
                result.update(event)
                return

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        process.kill()
        raise RuntimeError(f"client process gave no {kind!r} within {timeout:.0f} s "
                           f"(exit {process.poll()})")
    return result


def run(args: argparse.Namespace) -> tuple[list[list[object]], list[str]]:
    errors: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="cardserver-fanout-"))
    datastore = folder / ".metaflow"
    demo = start_run(datastore, flow="FanoutFlow")
    task = demo.start_task("work")
    padding = "x" * args.padding
    card = task.add_card(components=[
        markdown("title", "# Fan-out"),
        text("bench", "seq 0"),
        progress("p", 0, 100, "Progress"),
        markdown("notes", padding),
    ])
    card.update({"bench": {"text": "seq 0", "seq": 0, "written": time.time()}})
    topic = f"card/{card.key}"

    server = start_cardserver(datastore)
    clients: subprocess.Popen[str] | None = None
    try:
        rss_idle = rss_mb(server.pid)
        clients = subprocess.Popen(
            [sys.executable, __file__, "--role", "clients", "--port", str(server.port),
             "--topic", topic, "--readers", str(args.readers), "--stalled", str(args.stalled),
             "--rcvbuf", str(args.rcvbuf), "--final-wait", str(args.final_wait)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        ready = read_event(clients, "ready", 120)
        rss_connected = rss_mb(server.pid)
        sampler = PeakRSS(server.pid)
        sampler.start()
        cpu0, wall0 = cpu_seconds(server.pid), time.monotonic()
        client_cpu0, busy0 = cpu_seconds(clients.pid), machine_busy_seconds()
        period = 1.0 / args.rate
        total = max(1, round(args.seconds * args.rate))
        started = time.time()
        t0 = time.monotonic()
        for seq in range(1, total + 1):
            delay = t0 + (seq - 1) * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            card.update({"bench": {"text": f"seq {seq}", "seq": seq, "written": time.time()},
                         "p": {"value": seq % 100}})
        write_seconds = time.monotonic() - t0
        assert clients.stdin is not None
        clients.stdin.write(json.dumps({"last": total}) + "\n")
        clients.stdin.flush()
        client_cpu = cpu_seconds(clients.pid) - client_cpu0
        cpu = cpu_seconds(server.pid) - cpu0
        busy = machine_busy_seconds() - busy0
        wall = time.monotonic() - wall0
        result = read_event(clients, "result", args.final_wait + 30)
        sampler.stop.set()
        sampler.join()
        clients.stdin.close()
        clients.wait(timeout=30)
        if server.process.poll() is not None:
            errors.append("the server exited during the run")
    finally:
        if clients is not None and clients.poll() is None:
            clients.kill()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)

    dropped = [t - started for t in result["stalled_dropped"] if t is not None]
    growth = sampler.peak - rss_idle
    rows: list[list[object]] = [
        ["readers ending with the last update", f"{result['at_last']}/{result['readers']}",
         f"{result['readers']}/{result['readers']}", verdict(result["at_last"] == result["readers"])],
        ["delivery p50 (ms)", result["p50"], "-", "-"],
        ["delivery p90 (ms)", result["p90"], "-", "-"],
        ["delivery p99 (ms)", result["p99"], f"<= {TARGET_P99_MS:.0f}",
         verdict(result["p99"] <= TARGET_P99_MS)],
        ["delivery max (ms)", result["max"], "-", "-"],
        ["  handled by the client process p50 (ms)", result["seen_p50"], "-", "-"],
        ["  handled by the client process p99 (ms)", result["seen_p99"], "-", "-"],
        ["server RSS growth, idle -> peak (MB)", growth, f"<= {TARGET_RSS_GROWTH_MB:.0f}",
         verdict(growth <= TARGET_RSS_GROWTH_MB)],
        [f"  of which: {args.readers + args.stalled} connections (MB)", rss_connected - rss_idle, "-", "-"],
        ["  of which: during updates (MB)", sampler.peak - rss_connected, "-", "-"],
        ["stalled clients dropped by the server", f"{len(dropped)}/{result['stalled']}",
         f"{result['stalled']}/{result['stalled']}", verdict(len(dropped) == result["stalled"])],
        ["  dropped after (s from first write)",
         "-" if not dropped else f"{min(dropped):.1f}..{max(dropped):.1f}", "-", "-"],
        ["server CPU during updates (cores)", cpu / wall, "-", "-"],
        ["client process CPU during updates (cores)", client_cpu / wall, "-", "-"],
        ["other processes' CPU during updates (cores)", (busy - cpu - client_cpu) / wall, "-", "-"],
        ["updates written / write loop (s)", f"{total} / {write_seconds:.1f}", "-", "-"],
        ["messages received by readers", result["messages"], "-", "-"],
    ]
    if result["behind"]:
        errors.append(f"readers behind the last update ({total}); their last seqs: {result['behind']}")
    if result["closed_readers"]:
        errors.append(f"{result['closed_readers']} reading clients were closed by the server")
    if ready["readers"] != args.readers:
        errors.append("not every reader connected")
    return rows, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="20 readers + 2 stalled, 20 KB updates for 14 s (< 60 s)")
    parser.add_argument("--readers", type=int, default=500)
    parser.add_argument("--stalled", type=int, default=5)
    parser.add_argument("--rate", type=float, default=20.0, help="updates per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--padding", type=int, default=400,
                        help="bytes of markdown in the card's state (every update carries it)")
    parser.add_argument("--rcvbuf", type=int, default=2048, help="SO_RCVBUF of stalled clients")
    parser.add_argument("--final-wait", type=float, default=10.0,
                        help="seconds the readers get to receive the last update")
    parser.add_argument("--role", default="bench", choices=["bench", "clients"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "clients":
        asyncio.run(clients_main(args))
        return 0
    if args.smoke:
        # Big updates fill a stalled client's buffers within a second, so the server's stall
        # timeout (10 s) drops it inside the run: the smoke run proves the drop happens.
        args.readers, args.stalled, args.seconds, args.padding = 20, 2, 14.0, 20_000
    rows, errors = run(args)
    mode = "smoke" if args.smoke else "full"
    return report(
        f"Fan-out ({mode}): {args.readers} readers + {args.stalled} stalled on one card, "
        f"{args.rate:g} updates/s for {args.seconds:g} s",
        rows, errors, args.smoke,
    )


if __name__ == "__main__":
    sys.exit(main())

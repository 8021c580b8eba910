"""The first scan, read by forked processes while the server imports its web stack and opens
its port.

On a 10,000-task run the scan is ~1 s of system calls and Python, and threads cannot share it
(each system call gives up the GIL and waits to get it back). So `card server` forks before its
heavy imports, one process per tree, and each writes what it read to an unlinked temporary file
in `marshal`'s form (plain tuples: unpickling 20,000 events was slower than the scan itself).
Only the first scan is read this way: later there are threads, and forking a process with
threads is unsafe. Any failure of a child falls back to reading that tree here.

The scan starts before the file watch exists; the local source reads again, once the watch is open,
any run that appeared meanwhile (`LocalSource.read_missed_runs`).
"""

from __future__ import annotations

import gc
import logging
import marshal
import os
import signal
import tempfile
from collections.abc import Callable, Mapping
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import IO, Any, NoReturn

from . import disk
from .config import Limits, Roots
from .disk import Problem, Scanned, Scope
from .events import Event, RunWritten, TaskCardsRead, TaskMetaRead
from .layout import MetaKind, RunKey, TaskKey

log = logging.getLogger("cardserver")

Wire = tuple[Any, ...]  # one event or problem as plain values: what marshal can write


class Part:
    """One tree, read by a forked process into an unlinked temporary file; read in this process
    instead when that cannot be done (no fork on this system, no temporary file, a failed child)."""

    def __init__(self, name: str, read: Callable[[], Scanned]) -> None:
        self.name = name
        self.read = read
        self.pid: int | None = None
        self.output: IO[bytes] | None = None
        self.closed = False
        fork = getattr(os, "fork", None)  # Windows has none
        if fork is None:
            return
        try:
            self.output = tempfile.TemporaryFile()  # noqa: SIM115 (closed by result or close)
            self.pid = fork()
        except OSError as error:
            log.info("cannot fork to read the %s (%s): reading it in this process", name, error)
            if self.output is not None:
                self.output.close()
                self.output = None
            return
        if self.pid == 0:
            _child(read, self.output)

    def result(self) -> Scanned:
        """What the child read; blocks until it is done, so call it in a thread. Once."""
        if self.output is None:
            if self.closed:
                return [], []
            return self.read()
        try:
            if self.pid is not None and _exited_cleanly(self.pid):
                self.output.seek(0)
                events, problems = marshal.loads(self.output.read())
                return [_decode(e) for e in events], [Problem(Path(p), r) for p, r in problems]
        except (EOFError, ValueError, TypeError, KeyError) as error:
            log.info("the %s was read into something unreadable (%s)", self.name, error)
        finally:
            self.pid = None
            self.output.close()
            self.output = None
        if self.closed:  # the server is stopping: nobody wants the tree any more
            return [], []
        log.info("the process reading the %s failed: reading it in this process", self.name)
        return self.read()

    def close(self) -> None:
        """Stop the child if it is still reading: the server is stopping or could not start."""
        self.closed = True
        pid = self.pid
        if pid is not None:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _exited_cleanly(pid)  # reaps it, unless `result` in its thread already does


def _child(read: Callable[[], Scanned], output: IO[bytes]) -> NoReturn:
    """Read, write, and leave without running any of the parent's clean-up."""
    code = 1
    try:
        gc.disable()  # everything made here lives until the exit
        os.nice(10)  # the parent's start-up first: its port opens, then it waits for us
        events, problems = read()
        wire = ([_encode(e) for e in events], [(str(p.path), p.reason) for p in problems])
        output.write(marshal.dumps(wire))
        output.flush()
        code = 0
    finally:
        os._exit(code)


class Prescan:
    """Both trees, each read by its own forked process from now on."""

    def __init__(self, roots: Roots, limits: Limits, scope: Scope) -> None:
        self.parts = (
            Part("datastore", partial(_datastore, roots, limits, scope)),
            Part("cards", partial(_cards, roots, scope)),
        )

    def close(self) -> None:
        for part in self.parts:
            part.close()


def _datastore(roots: Roots, limits: Limits, scope: Scope) -> Scanned:
    problems: list[Problem] = []
    return list(disk.scan_datastore(roots, limits, scope, problems)), problems


def _cards(roots: Roots, scope: Scope) -> Scanned:
    return list(disk.scan_cards(roots, scope)), []


def _exited_cleanly(pid: int) -> bool:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return False
    return os.waitstatus_to_exitcode(status) == 0


# --- events as plain values ------------------------------------------------------------------
# Only the kinds a scan makes. The status documents a scan shares (`disk.NO_DOC`, the first
# attempt's) travel as their number here and come back as one shared object each.

_KINDS = {kind.value: kind for kind in MetaKind}


def _encode(event: Event) -> Wire:
    if isinstance(event, TaskMetaRead):
        files = tuple((kind.value, ts, _share(doc)) for kind, ts, doc in event.files)
        return ("meta", *_task(event.key), files)
    if isinstance(event, TaskCardsRead):
        return ("cards", *_task(event.task), event.legacy, event.pages, event.data)
    if isinstance(event, RunWritten):
        return ("run", event.key.flow, event.key.run, event.created, event.user)
    raise TypeError(f"a scan does not make {type(event).__name__}")


def _task(key: TaskKey) -> tuple[str, str, str, str]:
    return key.flow, key.run, key.step, key.task


def _decode(wire: Wire) -> Event:
    kind = wire[0]
    if kind == "meta":
        _, flow, run, step, task, files = wire
        return TaskMetaRead(
            TaskKey(flow, run, step, task),
            tuple((_KINDS[k], ts, _SHARED[doc] if isinstance(doc, int) else doc) for k, ts, doc in files),
        )
    if kind == "cards":
        _, flow, run, step, task, legacy, pages, data = wire
        return TaskCardsRead(TaskKey(flow, run, step, task), legacy, pages, data)
    if kind == "run":
        _, flow, run, created, user = wire
        return RunWritten(RunKey(flow, run), created, user)
    raise ValueError(f"unknown event kind {kind!r}")


_SHARED = (disk.NO_DOC, disk.FIRST_ATTEMPT)


def _share(doc: Mapping[str, Any]) -> int | dict[str, Any]:
    for number, shared in enumerate(_SHARED):
        if doc is shared:
            return number
    return dict(doc)

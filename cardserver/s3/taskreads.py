"""An S3 task folder's objects, read for status and for the task view: their JSON once per
ETag (`TaskDocs`), and a task's details and log pages when someone looks (`TaskReads`), never
for the index. Where a local runtime ran the run, its `_meta` adds metadata and card attempts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .. import disk, logs, taskinfo
from ..config import Limits
from ..layout import TaskKey, log_file_name, task_dir
from ..logs import Page
from ..taskinfo import TaskFolder
from . import logranges
from .client import Fetched, Got, S3Error, S3Object, S3Reader
from .logranges import RangeRead
from .settings import S3Root
from .taskfiles import READ_KINDS, TaskObject, attempt_of
from .taskview import latest_log, task_folder

log = logging.getLogger("cardserver")

INDEX_BYTES = 1 << 20  # an attempt's artifact index: names and hashes only
# Log pages and tracebacks read at once: each holds at most a few MB (logs.MAX_PAGE_BYTES read,
# and its lines), so 100 requests at once cannot hold 100 windows
LOG_READS_AT_ONCE = 4
LogCut = Callable[[RangeRead, int], Awaitable[Page]]  # (ranged read, object size) -> a page


class TaskDocs:
    """The JSON of task-folder objects that status needs, each read once per ETag."""

    def __init__(self, reader: S3Reader, sysroot: S3Root, limits: Limits, reads_at_once: int) -> None:
        self.reader = reader
        self.sysroot = sysroot
        self.limits = limits
        self._docs: dict[str, tuple[str, dict[str, Any] | None]] = {}  # key -> (ETag, doc)
        self._gate = asyncio.Semaphore(reads_at_once)

    async def objects(self, items: list[S3Object]) -> list[TaskObject]:
        return list(await asyncio.gather(*(self.object(item) for item in items)))

    async def object(self, item: S3Object) -> TaskObject:
        """A task-folder object, with its JSON when status needs it."""
        name = name_of(item)
        parsed = attempt_of(name)
        if parsed is None or parsed[1] not in READ_KINDS:
            return TaskObject(name, item.modified)
        cached = self._docs.get(item.key)
        if cached is None or cached[0] != item.etag:
            cap = INDEX_BYTES if parsed[1] == "data.json" else self.limits.max_meta_bytes
            async with self._gate:
                got = await self._get(item.key, cap)
            doc = disk.parse_json_bytes(got.body) if got.outcome is Got.NEW else None
            kept = slim(parsed[1], doc) if isinstance(doc, dict) else None
            cached = self._docs[item.key] = (item.etag, kept)
        return TaskObject(name, item.modified, cached[1])

    async def _get(self, key: str, cap: int) -> Fetched:
        try:
            return await self.reader.get(self.sysroot.bucket, key, max_bytes=cap)
        except S3Error as error:
            if "limit" not in str(error):
                raise
            return Fetched(Got.GONE)  # too big to be ours: says nothing


def slim(kind: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Only what status and the task view read: an artifact index names every artifact, and one
    is kept per task of every run read."""
    if kind != "data.json":
        return doc  # attempt.json and a verdict: a few fields
    objects = doc.get("objects")
    ok = objects.get("_task_ok") if isinstance(objects, dict) else None
    return {"objects": {"_task_ok": ok}} if isinstance(ok, str) else {}


class TaskReads:
    """The task view's reads (`Source.read_task`, `Source.read_log`) from S3."""

    def __init__(self, docs: TaskDocs, local: Path, limits: Limits) -> None:
        self.docs = docs
        self.reader = docs.reader
        self.sysroot = docs.sysroot
        self.local = local  # the working folder's .metaflow: a local runtime's _meta
        self.limits = limits
        self._log_reads = asyncio.Semaphore(LOG_READS_AT_ONCE)

    async def _objects(self, key: TaskKey) -> list[S3Object] | None:
        folder = "/".join(task_dir(key).parts) + "/"
        try:
            objects = (await self.reader.list_folder(self.sysroot, folder)).objects
        except S3Error as error:
            log.warning("S3: %s", error)
            return None
        return objects or None

    async def read_task(self, key: TaskKey) -> TaskFolder | None:
        objects = await self._objects(key)
        if objects is None:
            return None
        try:
            docs = await self.docs.objects(objects)
        except S3Error as error:
            log.warning("S3: %s", error)
            return None
        found = task_folder(zip(docs, (item.size for item in objects), strict=True))
        if (self.local / task_dir(key) / "_meta").is_dir():  # a local runtime's metadata of the task
            local = await asyncio.to_thread(taskinfo.read_task, self.local, key, self.limits.max_meta_bytes)
            if local is not None:
                with_local_meta(found, local)
        found.traceback = await self._traceback(found, objects)
        return found

    async def _traceback(self, found: TaskFolder, objects: list[S3Object]) -> dict[str, Any] | None:
        """The traceback of the latest failed attempt, from the end of its stderr."""
        failed = taskinfo.failed_log(found.attempts)
        name = log_file_name(failed, "stderr") if failed is not None else None
        stderr = next((item for item in objects if name_of(item) == name), None)
        if failed is None or stderr is None:
            return None
        try:
            tail = await self._ranged(stderr, logranges.traceback_tail)
        except logranges.Changed:  # a failed attempt's stderr is final: a rewrite says nothing
            return None
        return taskinfo.traceback_doc(failed, logs.traceback_in(tail)) if tail is not None else None

    async def read_log(self, key: TaskKey, stream: str, attempt: int | None, lines: int,
                       before: int | None, since: int | None) -> tuple[int, Page] | None:
        """A page of a log, in ranges of it; a log rewritten while read (a remote task uploads
        its logs every few seconds) is listed again, once."""
        def cut(read: RangeRead, size: int) -> Awaitable[Page]:
            return logranges.page(read, size, lines, before, since)

        for _ in range(2):
            objects = await self._objects(key)
            if objects is None:
                return None
            named = {name_of(item): item for item in objects}
            number = latest_log(named, stream) if attempt is None else attempt
            item = named.get(log_file_name(number, stream)) if number is not None else None
            if number is None or item is None:
                return None
            try:
                found = await self._ranged(item, cut)
            except logranges.Changed:
                continue
            return None if found is None else (number, found)
        return None

    async def _ranged(self, item: S3Object, cut: LogCut) -> Page | None:
        """A page cut from the object in ranged GETs of the version listed (None on a fault)."""

        async def read(start: int, end: int) -> bytes:
            got = await self.reader.get_range(self.sysroot.bucket, item.key, start, end, item.etag)
            if got.outcome is not Got.NEW:
                raise logranges.Changed(f"s3://{self.sysroot.bucket}/{item.key} changed since it was listed")
            return got.body

        try:
            async with self._log_reads:
                return await cut(read, item.size)
        except S3Error as error:
            log.warning("S3: %s", error)
            return None


def name_of(item: S3Object) -> str:
    return item.key.rsplit("/", 1)[-1]


def with_local_meta(found: TaskFolder, local: TaskFolder) -> None:
    """What the local `_meta` adds to a task folder read from S3: metadata, each card's attempt,
    and attempt_ok where S3 had no `_task_ok`."""
    found.metadata = local.metadata
    found.card_attempts = local.card_attempts
    for number, files in local.attempts.items():
        if number in found.attempts and found.attempts[number].attempt_ok is None:
            found.attempts[number].attempt_ok = files.attempt_ok

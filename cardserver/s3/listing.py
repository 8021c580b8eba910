"""S3 listings into events, in the user's words. Pure: the source lists, this classifies.

Card keys are classified by `layout.parse_card_parts` once the card root's prefix is removed,
task-folder keys by `layout.task_folder_file` once the datastore's is: the path grammar lives
only in layout.py. A key that is not ours (or out of `--flow`/`--run-id`) is left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..disk import Scope
from ..events import CardPage, CardWritten, DataWritten, Event, TaskCardsRead
from ..layout import CardFile, CardFileKind, RunKey, TaskKey, is_name, parse_card_parts, task_folder_file
from .client import S3Object


def below(prefix: str, key: str) -> tuple[str, ...] | None:
    """The parts of `key` below `prefix` (a folder: empty or ending in a slash)."""
    return tuple(key[len(prefix):].split("/")) if key.startswith(prefix) else None


def folder_names(prefix: str, folders: Iterable[str]) -> list[str]:
    """The well-named folder names of a delimiter listing's common prefixes below `prefix`."""
    names = (folder[len(prefix):].rstrip("/") for folder in folders if folder.startswith(prefix))
    return [name for name in names if is_name(name)]


def version(etag: str) -> str:
    """A card's version from its ETag: quotes off (the web layer quotes versions itself)."""
    return etag.strip('"')


@dataclass(frozen=True, slots=True)
class CardObject:
    """A card key found in a listing, with the object it names."""

    file: CardFile
    object: S3Object


def card_objects(prefix: str, objects: Iterable[S3Object], scope: Scope) -> list[CardObject]:
    found = []
    for item in objects:
        parts = below(prefix, item.key)
        file = parse_card_parts(parts) if parts is not None else None
        if file is not None and scope.wants(file.key.task.flow, file.key.task.run):
            found.append(CardObject(file, item))
    return found


def card_events(cards: Iterable[CardObject]) -> list[Event]:
    """A run's card objects as one TaskCardsRead per task (data updates known, not read)."""
    pages: dict[tuple[TaskKey, bool], list[CardPage]] = {}
    data: dict[tuple[TaskKey, bool], list[tuple[str, float]]] = {}
    for card in cards:
        slot = (card.file.key.task, card.file.legacy)
        item, name = card.object, card.file.key.name
        if card.file.kind is CardFileKind.HTML:
            pages.setdefault(slot, []).append((name, item.modified, item.size, version(item.etag)))
        else:
            data.setdefault(slot, []).append((name, item.modified))
    return [TaskCardsRead(task, legacy, tuple(pages.get(slot, ())), tuple(data.get(slot, ())))
            for slot in {**pages, **data} for task, legacy in (slot,)]


def changed_card_events(cards: Iterable[CardObject], seen: dict[str, str]) -> list[Event]:
    """Events for the card objects whose ETag differs from the one `seen` (by key)."""
    events: list[Event] = []
    for card in cards:
        item, file = card.object, card.file
        if seen.get(item.key) == item.etag:
            continue
        if file.kind is CardFileKind.HTML:
            events.append(CardWritten(file.key, file.legacy, item.modified, item.size, version(item.etag)))
        else:
            events.append(DataWritten(file.key, file.legacy, item.modified, None))
    return events


def task_folders(prefix: str, objects: Iterable[S3Object], run: RunKey) -> dict[TaskKey, list[S3Object]]:
    """A run's task-folder objects (listed below the datastore's `prefix`), by task."""
    found: dict[TaskKey, list[S3Object]] = {}
    for item in objects:
        parts = below(prefix, item.key)
        hit = task_folder_file(parts) if parts is not None else None
        if hit is not None and hit[0].run_key == run:
            found.setdefault(hit[0], []).append(item)
    return found


def signature(objects: Iterable[S3Object]) -> frozenset[tuple[str, str]]:
    """What tells one state of a task folder from the next: its keys and their ETags."""
    return frozenset((item.key, item.etag) for item in objects)

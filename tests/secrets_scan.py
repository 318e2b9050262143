"""Find secret values anywhere in a workflow history, payloads decoded.

``history.to_json()`` shows payload data base64-encoded, so ``secret not in history.to_json()``
holds even when the secret sits in an activity's input or result: that scan cannot fail. This
one walks every protobuf message of every event (payloads, failures, headers, memo, search
attributes, user metadata, at any depth) and reads each bytes field as text, and as JSON with
escapes undone; strings (failure messages, stack traces) are read as they are, and the raw
serialized event as a last resort.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from google.protobuf.message import Message
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import History, HistoryEvent
from temporalio.client import WorkflowHistory

__all__ = ["Finding", "find_secrets"]


@dataclass(frozen=True)
class Finding:
    """Where one needle was found."""

    event_id: int
    event_type: str
    path: str
    """Field path inside the event, e.g. ``activity_task_scheduled_event_attributes.input.
    payloads[0].data``; ``<serialized event>`` for a match only in the raw bytes."""
    needle: str


def _texts(value: object) -> Iterator[str]:
    if isinstance(value, bytes):
        yield value.decode("utf-8", errors="replace")
        try:  # JSON escapes ("\u00e9", "\/") would hide a needle from a plain search
            decoded = json.loads(value)
        except (ValueError, RecursionError):
            return
        yield json.dumps(decoded, ensure_ascii=False)
    elif isinstance(value, str):
        yield value


def _fields(message: Message, path: str) -> Iterator[tuple[str, object]]:
    """Every scalar in ``message`` at any depth, with its path; map keys count as values."""
    for field, value in message.ListFields():
        name = f"{path}.{field.name}" if path else field.name
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            items: Iterable[tuple[str, object]] = (
                (f"{name}[{key!r}]", item) for key, item in value.items()
            )
            for key, _ in value.items():
                yield f"{name}<key>", key
        elif field.is_repeated:
            items = ((f"{name}[{i}]", item) for i, item in enumerate(value))
        else:
            items = [(name, value)]
        for item_path, item in items:
            if isinstance(item, Message):
                yield from _fields(item, item_path)
            else:
                yield item_path, item


def find_secrets(
    history: WorkflowHistory | History | Iterable[HistoryEvent], needles: Iterable[str]
) -> list[Finding]:
    """Every place in ``history`` where one of ``needles`` occurs.

    Args:
        history: ``await handle.fetch_history()``, a protobuf ``History``, or events.
        needles: The secret values to look for (non-empty strings).

    Returns:
        One finding per needle per field (and per event for raw-bytes-only matches);
        empty when the history is clean.
    """
    wanted = [n for n in needles if n]
    assert wanted, "find_secrets needs at least one non-empty needle"
    events = history.events if isinstance(history, WorkflowHistory | History) else history
    findings: list[Finding] = []
    for event in events:
        kind = EventType.Name(event.event_type)
        found: set[tuple[str, str]] = set()  # (path, needle): a field's two views count once
        for path, value in _fields(event, ""):
            for text in _texts(value):
                for needle in wanted:
                    if needle in text and (path, needle) not in found:
                        found.add((path, needle))
                        findings.append(Finding(event.event_id, kind, path, needle))
        raw = event.SerializeToString()
        for needle in wanted:
            if needle.encode() in raw and all(n != needle for _, n in found):
                findings.append(Finding(event.event_id, kind, "<serialized event>", needle))
    return findings

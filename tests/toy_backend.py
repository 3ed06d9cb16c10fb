"""A toy storage backend for tests/test_backend_registry.py: what a new backend's module is
(a Storage implementation and ``build``), kept in memory so no service is needed."""

from __future__ import annotations

from typing import Any

from prefect_dr.storage.memory import MemoryStorage

#: The boxes of this process: a repository opened twice is the same store.
BOXES: dict[str, ToyStorage] = {}


class ToyStorage(MemoryStorage):
    """The memory backend under another name, with a fact doctor reports."""

    def __init__(self, box: str, zone: str) -> None:
        super().__init__()
        self.box, self.zone = box, zone
        self.description = f"toy://{box} in zone {zone}"

    def facts(self) -> list[tuple[str, str]]:
        return [("toy zone", self.zone)]

    def credentials_source(self) -> str:
        return "toy tokens (none needed)"


def build(url: Any, settings: Any, retry_deadline_s: float) -> ToyStorage:
    """The ToyStorage of ``url``: the zone from the URL's ``zone`` parameter, else
    ``default``."""
    if url.container not in BOXES:
        BOXES[url.container] = ToyStorage(url.container, url.params.get("zone", "default"))
    return BOXES[url.container]

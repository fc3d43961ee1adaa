"""A one-entry cache for a large derived value (a dataset, a padded copy of the images)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Latest:
    """One derived value, kept for the latest source (the same object, with the same detail; None as the source
    when the detail says it all): the runs of a pack, and a process's successive runs over the same data, share it
    instead of holding one copy each. The old value is dropped before the new one is made, so two never coexist."""

    def __init__(self) -> None:
        self.entry: tuple[object, object, Any] | None = None

    def get(self, source: object, detail: object, make: Callable[[], Any]) -> Any:
        if self.entry is None or self.entry[0] is not source or self.entry[1] != detail:
            self.entry = None  # free the old value before making the new one
            self.entry = (source, detail, make())
        return self.entry[2]

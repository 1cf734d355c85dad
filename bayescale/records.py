"""Typed results: frozen dataclasses that are also read-only mappings over their JSON.

Every result a command prints as JSON (the allocation, the held-out check, hubs and islands)
is a :class:`Record`: its fields are typed and documented, :meth:`Record.to_dict` writes the
command's JSON (the same keys, in the same order, as before results were typed), and reading
it as a mapping (``result["coverage_90"]``, ``result.get("laws")``) reads that JSON, so code
written for plain dicts keeps working.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


def plain(value):
    """``value`` as plain JSON-able Python: records become dicts, recursively."""
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class Record(Mapping):
    """A result record: :meth:`to_dict` is its JSON; reading it as a mapping reads that JSON."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str):
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def __contains__(self, key) -> bool:
        return key in self.to_dict()

    __hash__ = None  # records hold dicts and lists

    def _ordered(self, names, *, omit_none=()) -> dict[str, Any]:
        """The named fields in that order, leaving out those in ``omit_none`` that are None."""
        out = {}
        for name in names:
            value = getattr(self, name)
            if value is None and name in omit_none:
                continue
            out[name] = plain(value)
        return out

"""The index's cache of ready image rows, by collection, for searches: within
a count and an estimated memory bound, and knowing which collections it
holds whole (every ready row), so that a hit missing from those is known not
to be ready without asking SQL. Not thread-safe: ``MetadataStore`` calls it
under its cache lock, and decides when rows are current."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from index_service.rows import ImageRow


def row_bytes(row: ImageRow) -> int:
    """A cached row's memory, roughly: the object and its strings."""
    return 400 + len(row.sha256) + len(row.model) + sum(80 + len(p) for p in row.paths)


class RowCache:
    def __init__(self, max_rows: int, max_bytes: int) -> None:
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._rows: dict[str, dict[int, ImageRow]] = {}
        self._bytes: dict[str, int] = {}  # estimated size of each collection's rows
        self._whole: set[str] = set()  # collections held with every ready row

    @property
    def on(self) -> bool:
        return self.max_rows > 0

    def names(self) -> set[str]:
        return set(self._rows)

    def held(self) -> tuple[int, int]:
        """Rows held, and their estimated bytes."""
        return sum(len(r) for r in self._rows.values()), sum(self._bytes.values())

    def whole(self, name: str) -> bool:
        return name in self._whole

    def found(self, name: str, ids: Sequence[int]) -> dict[int, ImageRow]:
        """The cached rows of ``ids``."""
        cached = self._rows.get(name, {})
        return {i: cached[i] for i in ids if i in cached}

    def answer(self, name: str, ids: Sequence[int]) -> dict[int, ImageRow] | None:
        """The ready rows of ``ids`` if the cache knows them all (each is
        cached, or the collection is held whole), else None."""
        cached = self._rows.get(name)
        if cached is None:
            return None
        if name in self._whole:
            return {i: cached[i] for i in ids if i in cached}
        try:
            return {i: cached[i] for i in ids}
        except KeyError:
            return None

    def add(self, name: str, rows: Mapping[int, ImageRow]) -> None:
        """Rows read for a search; past either bound, everything cached is
        dropped first."""
        size = sum(row_bytes(r) for r in rows.values())
        count, held = self.held()
        if count + len(rows) > self.max_rows or held + size > self.max_bytes:
            self.clear()
        self._rows.setdefault(name, {}).update(rows)
        self._bytes[name] = self._bytes.get(name, 0) + size

    def room(self, name: str) -> int:
        """Rows the collection may have in place of its cached ones without
        dropping others'."""
        return self.max_rows - sum(len(r) for n, r in self._rows.items() if n != name)

    def fits(self, name: str, count: int, size: int) -> bool:
        """Whether ``count`` rows of ``size`` bytes would fit in place of the
        collection's cached ones without dropping others."""
        held = sum(b for n, b in self._bytes.items() if n != name)
        return count <= self.room(name) and held + size <= self.max_bytes

    def put_whole(self, name: str, rows: dict[int, ImageRow]) -> bool:
        """Every ready row of the collection, replacing what was cached of
        it, if they fit beside the other collections' rows."""
        size = sum(row_bytes(r) for r in rows.values())
        if not self.fits(name, len(rows), size):
            return False
        self._rows[name] = rows
        self._bytes[name] = size
        self._whole.add(name)
        return True

    def drop(self, name: str) -> None:
        self._rows.pop(name, None)
        self._bytes.pop(name, None)
        self._whole.discard(name)

    def clear(self) -> None:
        self._rows.clear()
        self._bytes.clear()
        self._whole.clear()

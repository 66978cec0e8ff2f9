"""A least-recently-used cache bounded by a total weight: a number of entries, or bytes.

One implementation for every small cache in histobag: decoded TIFF tiles (bounded by bytes)
and open slide or TFRecord handles (bounded by count, closed when dropped).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["LRUCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _one(value: object) -> int:
    return 1


class LRUCache(Generic[K, V]):
    """Values by key; past ``capacity``, the least recently used are dropped first.

    Not thread-safe: each owner keeps its own and uses it from one thread.

    Args:
        capacity: Largest total weight kept. A value heavier than that on its own is dropped
            as soon as it is put (:meth:`get_or_make` still returns it).
        weigh: Weight of a value; by default 1, so ``capacity`` counts entries
            (``weigh=lambda a: a.nbytes`` bounds the bytes of arrays instead).
        on_evict: Called with each value dropped (to make room, replaced, or by
            :meth:`clear`), e.g. to close a file handle.

    Example:
        >>> cache = LRUCache(2)
        >>> cache.put("a", 1); cache.put("b", 2); _ = cache.get("a"); cache.put("c", 3)
        >>> list(cache)
        ['a', 'c']
    """

    def __init__(
        self,
        capacity: int,
        *,
        weigh: Callable[[V], int] = _one,
        on_evict: Callable[[V], object] | None = None,
    ) -> None:
        self.capacity = capacity
        self._weigh = weigh
        self._on_evict = on_evict
        self._items: OrderedDict[K, V] = OrderedDict()
        self._weight = 0

    @property
    def weight(self) -> int:
        """Total weight of the values kept."""
        return self._weight

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[K]:
        """The keys, least recently used first."""
        return iter(list(self._items))

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value of ``key`` (now the most recently used), or ``default``."""
        if key not in self._items:
            return default
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key`` as the most recently used, then drop the least recently
        used values until the total weight is within ``capacity``."""
        old = self._items.pop(key, None)
        if old is not None:
            self._weight -= self._weigh(old)
            if old is not value:
                self._evicted(old)
        self._items[key] = value
        self._weight += self._weigh(value)
        while self._weight > self.capacity and self._items:
            _, dropped = self._items.popitem(last=False)
            self._weight -= self._weigh(dropped)
            self._evicted(dropped)

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        """The value of ``key``, made with ``make()`` and kept when missing."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make()
        self.put(key, value)
        return value

    def clear(self) -> None:
        """Drop every value (``on_evict`` is called for each)."""
        items, self._items, self._weight = self._items, OrderedDict(), 0
        for value in items.values():
            self._evicted(value)

    def _evicted(self, value: V) -> None:
        if self._on_evict is not None:
            self._on_evict(value)

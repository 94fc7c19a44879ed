"""An LRU of raw rewards and coalescing of identical in-flight work."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class LRU(Generic[V]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable) -> V | None:
        if key not in self._data:
            return None
        self._data.move_to_end(key)
        return self._data[key]

    def put(self, key: Hashable, value: V) -> None:
        if self.capacity <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class Coalescer(Generic[V]):
    """Runs one coroutine per key at a time; concurrent callers with the same key share its result."""

    def __init__(self) -> None:
        self._inflight: dict[Hashable, asyncio.Future[V]] = {}

    async def run(self, key: Hashable, make: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """(result, shared): shared is True when another caller's work was reused."""
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut), True
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            result = await make()
        except BaseException as e:
            if not fut.done():
                fut.set_exception(e if isinstance(e, Exception) else asyncio.CancelledError())
            fut.exception()  # mark retrieved: no "never retrieved" warning when nobody shared it
            raise
        else:
            fut.set_result(result)
            return result, False
        finally:
            self._inflight.pop(key, None)

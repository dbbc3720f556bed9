"""Append-only sequences shared between a conversation and its continuations.

A continuation extends its parent's buffer in place when nobody has extended it yet (the agent
loop's common case, O(new items)); only a fork, which extends an already-extended parent, copies
the prefix. This is how Go slices share arrays, and it keeps per-turn cost independent of history.

Token ids and block hashes live in ``array`` buffers (4 and 8 bytes each) rather than lists of int
objects (8 bytes of pointer plus a 28-byte int above 256): a cached 100k-token conversation held
4.7 MB as lists.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, MutableSequence, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")

BLOCK_SIZE = 64  # tokens per prefix-cache block, hashed as a chain like vLLM's prefix caching


class AppendOnly(Generic[T]):
    """An immutable view ``buffer[:length]`` whose ``extend`` returns a longer view."""

    __slots__ = ("_buffer", "_length")

    def __init__(self, buffer: MutableSequence[T] | None = None, length: int | None = None) -> None:
        self._buffer: Any = buffer if buffer is not None else []  # a list, or an array of ints
        self._length = len(self._buffer) if length is None else length

    def extend(self, values: Iterable[T]) -> AppendOnly[T]:
        buffer = self._buffer
        if len(buffer) != self._length:  # a sibling already appended here: this is a fork
            buffer = buffer[: self._length]
        buffer.extend(values)
        return AppendOnly(buffer, len(buffer))

    def __len__(self) -> int:
        return self._length

    def shares_buffer(self, other: AppendOnly[T]) -> bool:
        """Whether ``other`` was extended in place from this view (not copied by a fork)."""
        return self._buffer is other._buffer

    def __iter__(self) -> Iterator[T]:
        buffer = self._buffer
        for i in range(self._length):
            yield buffer[i]

    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return self.to_list()[index]
        if not -self._length <= index < self._length:
            raise IndexError(index)
        return self._buffer[index % self._length]

    def tail(self, start: int) -> Sequence[T]:
        """``self[start:]`` in the buffer's own type (no list of int objects for an array)."""
        return self._buffer[start : self._length]

    def to_list(self, start: int = 0, stop: int | None = None) -> list[T]:
        part = self._buffer[start : self._length if stop is None else min(stop, self._length)]
        return part.tolist() if isinstance(part, array) else part


class TokenSequence:
    """Token ids plus the chained hash of every full block, both extended incrementally.

    ``block_hashes()[i]`` identifies the prefix ``tokens[: (i + 1) * BLOCK_SIZE]``, so an engine
    can find its longest cached prefix without looking at the tokens again.
    """

    __slots__ = ("_tokens", "_hashes")

    def __init__(self, tokens: AppendOnly[int] | None = None, hashes: AppendOnly[int] | None = None) -> None:
        self._tokens = tokens if tokens is not None else AppendOnly(array("I"))  # o200k ids fit 32 bits
        self._hashes = hashes if hashes is not None else AppendOnly(array("q"))

    @classmethod
    def of(cls, ids: Sequence[int]) -> TokenSequence:
        return cls().extend(ids)

    def extend(self, ids: Sequence[int]) -> TokenSequence:
        tokens = self._tokens.extend(ids)
        done = len(self._hashes)
        full = len(tokens) // BLOCK_SIZE
        if full == done:
            return TokenSequence(tokens, self._hashes)
        buffer = tokens.tail(done * BLOCK_SIZE)  # only the tail that is not hashed yet
        previous = self._hashes[-1] if done else 0
        new_hashes = []
        for b in range(full - done):
            previous = hash((previous, *buffer[b * BLOCK_SIZE : (b + 1) * BLOCK_SIZE]))
            new_hashes.append(previous)
        return TokenSequence(tokens, self._hashes.extend(new_hashes))

    def __len__(self) -> int:
        return len(self._tokens)

    def ids(self, start: int = 0, stop: int | None = None) -> list[int]:
        return self._tokens.to_list(start, stop)

    def tail(self, start: int = 0) -> Sequence[int]:
        """The ids from ``start`` on, as the buffer holds them (an array: no int objects made)."""
        return self._tokens.tail(start)

    def block_hashes(self) -> AppendOnly[int]:
        return self._hashes

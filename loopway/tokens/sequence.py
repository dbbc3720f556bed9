"""Append-only sequences shared between a conversation and its continuations.

A continuation extends its parent's buffer in place when nobody has extended it yet (the agent
loop's common case, O(new items)); only a fork, which extends an already-extended parent, copies
the prefix. This is how Go slices share arrays, and it keeps per-turn cost independent of history.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

BLOCK_SIZE = 64  # tokens per prefix-cache block, hashed as a chain like vLLM's prefix caching


class AppendOnly(Generic[T]):
    """An immutable view ``buffer[:length]`` whose ``extend`` returns a longer view."""

    __slots__ = ("_buffer", "_length")

    def __init__(self, buffer: list[T] | None = None, length: int | None = None) -> None:
        self._buffer: list[T] = buffer if buffer is not None else []
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
            return self._buffer[: self._length][index]
        if not -self._length <= index < self._length:
            raise IndexError(index)
        return self._buffer[index % self._length]

    def to_list(self, start: int = 0) -> list[T]:
        return self._buffer[start : self._length]


class TokenSequence:
    """Token ids plus the chained hash of every full block, both extended incrementally.

    ``block_hashes()[i]`` identifies the prefix ``tokens[: (i + 1) * BLOCK_SIZE]``, so an engine
    can find its longest cached prefix without looking at the tokens again.
    """

    __slots__ = ("_tokens", "_hashes")

    def __init__(self, tokens: AppendOnly[int] | None = None, hashes: AppendOnly[int] | None = None) -> None:
        self._tokens = tokens if tokens is not None else AppendOnly()
        self._hashes = hashes if hashes is not None else AppendOnly()

    @classmethod
    def of(cls, ids: Sequence[int]) -> TokenSequence:
        return cls().extend(ids)

    def extend(self, ids: Sequence[int]) -> TokenSequence:
        tokens = self._tokens.extend(ids)
        done = len(self._hashes)
        full = len(tokens) // BLOCK_SIZE
        if full == done:
            return TokenSequence(tokens, self._hashes)
        buffer = tokens.to_list(done * BLOCK_SIZE)  # only the tail that is not hashed yet
        previous = self._hashes[-1] if done else 0
        new_hashes = []
        for b in range(full - done):
            previous = hash((previous, *buffer[b * BLOCK_SIZE : (b + 1) * BLOCK_SIZE]))
            new_hashes.append(previous)
        return TokenSequence(tokens, self._hashes.extend(new_hashes))

    def __len__(self) -> int:
        return len(self._tokens)

    def ids(self, start: int = 0) -> list[int]:
        return self._tokens.to_list(start)

    def block_hashes(self) -> AppendOnly[int]:
        return self._hashes

"""Append-only sequences: continuations share buffers, forks never see each other's appends."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from loopway.tokens.sequence import BLOCK_SIZE, AppendOnly, TokenSequence


def test_continuation_extends_in_place():
    base = AppendOnly([1, 2])
    child = base.extend([3])
    assert list(base) == [1, 2] and list(child) == [1, 2, 3]
    assert base.shares_buffer(child)


def test_fork_copies_and_leaves_sibling_intact():
    base = AppendOnly([1, 2])
    left = base.extend([3])
    right = base.extend([4, 5])
    assert list(left) == [1, 2, 3] and list(right) == [1, 2, 4, 5] and list(base) == [1, 2]
    assert not base.shares_buffer(right)


def test_slicing_respects_the_view():
    left = AppendOnly([1, 2]).extend([3])
    assert left[1:] == [2, 3] and left[-1] == 3


token_lists = st.lists(st.integers(min_value=0, max_value=200_000), max_size=300)


@given(st.lists(token_lists, max_size=6))
def test_incremental_block_hashes_equal_hashing_at_once(chunks: list[list[int]]):
    sequence = TokenSequence()
    for chunk in chunks:
        sequence = sequence.extend(chunk)
    whole = TokenSequence.of([t for chunk in chunks for t in chunk])
    assert sequence.ids() == whole.ids()
    assert list(sequence.block_hashes()) == list(whole.block_hashes())
    assert len(sequence.block_hashes()) == len(whole) // BLOCK_SIZE


@given(token_lists, token_lists, token_lists)
def test_forked_sequences_hash_their_own_tokens(prefix: list[int], a: list[int], b: list[int]):
    base = TokenSequence.of(prefix)
    left, right = base.extend(a), base.extend(b)
    assert list(left.block_hashes()) == list(TokenSequence.of(prefix + a).block_hashes())
    assert list(right.block_hashes()) == list(TokenSequence.of(prefix + b).block_hashes())

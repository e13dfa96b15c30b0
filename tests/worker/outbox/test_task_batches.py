"""How a dispatch pass's ids are cut into deliver tasks (``task_batches``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from worker.outbox.dispatcher import task_batches


def test_a_small_pass_is_spread_over_the_worker_threads() -> None:
    batches = task_batches(list(range(16)), batch=50, spread=8)
    assert [len(b) for b in batches] == [2] * 8


def test_a_pass_smaller_than_the_spread_is_one_send_per_task() -> None:
    assert task_batches([7, 8, 9], batch=50, spread=8) == [[7], [8], [9]]


def test_a_large_pass_keeps_full_batches() -> None:
    batches = task_batches(list(range(1000)), batch=50, spread=8)
    assert [len(b) for b in batches] == [50] * 20


def test_without_spread_a_pass_is_cut_at_the_batch_size() -> None:
    assert [len(b) for b in task_batches(list(range(120)), batch=50)] == [50, 50, 20]


@given(
    ids=st.lists(st.integers(), max_size=600),
    batch=st.integers(min_value=1, max_value=80),
    spread=st.integers(min_value=1, max_value=16),
)
def test_every_id_once_in_order_within_the_limits(ids: list[int], batch: int, spread: int) -> None:
    batches = task_batches(ids, batch, spread)
    assert [i for b in batches for i in b] == ids
    assert all(1 <= len(b) <= batch for b in batches)
    assert len(batches) >= min(len(ids), spread)

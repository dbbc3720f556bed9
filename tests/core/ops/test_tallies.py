"""Per-tenant tallies: one process's dict, and the shared map every forked worker sees."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

from loopway.core.ops.tallies import LocalTallies, SharedTallies


def add(amount: float):
    return lambda pair: (pair[0] + amount, pair[1] + 1)


def test_local_tallies_start_at_the_default_and_keep_each_tenant_apart():
    tallies = LocalTallies()
    assert tallies.update("acme", (10.0, 0.0), add(-1)) == (9.0, 1.0)
    assert tallies.update("acme", (10.0, 0.0), add(-1)) == (8.0, 2.0)
    assert tallies.update("globex", (10.0, 0.0), add(-1)) == (9.0, 1.0)


def _spend(tallies: SharedTallies, times: int) -> None:
    for _ in range(times):
        tallies.update("acme", (0.0, 0.0), add(1))


def test_forked_workers_share_one_count_and_lose_no_update():
    tallies = SharedTallies(slots=64)
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_spend, args=(tallies, 500)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert tallies.update("acme", (0.0, 0.0), lambda pair: pair) == (2000.0, 2000.0)


def test_a_full_table_counts_newcomers_locally_and_keeps_the_rest():
    tallies = SharedTallies(slots=2)
    for tenant in ("a", "b", "c", "d"):
        tallies.update(tenant, (0.0, 0.0), add(1))
    assert tallies.update("a", (0.0, 0.0), add(1)) == (2.0, 2.0)  # in the table
    assert tallies.update("d", (0.0, 0.0), add(1)) == (2.0, 2.0)  # past its room: this process's count
    assert tallies._warned


def _hold_the_lock_forever(tallies: SharedTallies, holding) -> None:
    with tallies._lock.held():
        holding.set()
        time.sleep(60)


def test_a_worker_killed_while_it_holds_the_lock_wedges_nobody():
    tallies = SharedTallies(slots=16)
    context = multiprocessing.get_context("fork")
    holding = context.Event()
    holder = context.Process(target=_hold_the_lock_forever, args=(tallies, holding))
    holder.start()
    assert holding.wait(10)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    done = threading.Event()
    threading.Thread(target=lambda: (tallies.update("acme", (0.0, 0.0), add(1)), done.set()), daemon=True).start()
    assert done.wait(5), "the dead worker's lock was never released"


def test_a_dead_workers_counts_are_forgotten_and_the_others_kept():
    tallies = SharedTallies(slots=64)
    tallies.update("acme\x000", (0.0, 0.0), lambda pair: (3.0, 0.0))
    tallies.update("acme\x001", (0.0, 0.0), lambda pair: (2.0, 1.0))
    tallies.forget(0.0)
    assert tallies.update_all(["acme\x000", "acme\x001"], (0.0, 0.0), lambda pairs: pairs) == [(0.0, 0.0), (2.0, 1.0)]

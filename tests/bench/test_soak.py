"""The soak benchmark: no pass by averaging, and the whole bench runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loopway.bench.soak import summarize
from loopway.bench.soakload import SessionTally, Tally


def tally(rates: list[float], gap_ms: float = 5.0) -> Tally:
    return Tally(
        event_gaps_ms=[gap_ms] * 100,
        turn_max_gaps_ms=[gap_ms] * 10,
        sessions=[SessionTally(tokens=int(rate), answer_s=1.0) for rate in rates],
        turns=10,
        deltas=100,
        output_tokens=900,
    )


def test_one_session_at_half_rate_fails_the_level_whatever_the_average():
    healthy = summarize("loopway", 100, 1.0, [tally([1000.0] * 99)], {}, 20.0)
    slow = summarize("loopway", 100, 1.0, [tally([1000.0] * 98 + [500.0])], {}, 20.0)
    assert healthy["passes"] and not slow["passes"]
    assert slow["rate_p1"] == 500.0


def test_gaps_fail_a_level_and_errors_fail_it_too():
    assert not summarize("loopway", 1, 1.0, [tally([1000.0], gap_ms=60.0)], {}, 20.0)["passes"]
    broken = tally([1000.0])
    broken.errors.append("ConnectionClosedError")
    assert not summarize("loopway", 1, 1.0, [broken], {}, 20.0)["passes"]


def test_cpu_is_divided_by_what_was_delivered():
    row = summarize("loopway", 1, 2.0, [tally([1000.0])], {}, 20.0)
    assert row["cpu_us_per_delta"] == 2.0e6 / 110  # every delta event, each turn's first included
    assert row["cpu_ms_per_turn"] == 2.0e3 / 10
    assert row["tokens_per_s"] == 900 / 20.0


def test_the_bench_runs_end_to_end(tmp_path: Path):
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, "-m", "loopway", "bench", "soak", "--levels", "2", "--duration-s", "1.5", "--warmup-s", "1",
         "--memory-sessions", "1", "--memory-tokens", "2000", "--delta-sessions", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads(out.read_text())
    assert [(r["server"], r["sessions"]) for r in document["levels"]] == [("loopway", 2), ("floor", 2)]
    assert all(r["errors"] == 0 and r["tokens_per_s"] > 0 for r in document["levels"])
    assert set(document["per_delta"]) == {"loopway", "floor"}
    assert document["memory_mb_per_session"]["after_the_next_turn"] > 0

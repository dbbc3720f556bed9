"""The dashboard-cost benchmark runs end to end: nobody, reading and stalled viewers, side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_the_bench_runs_end_to_end(tmp_path: Path):
    out = tmp_path / "dashboard.json"
    done = subprocess.run(
        [sys.executable, "-m", "loopway", "bench", "dashboard", "--sessions", "4", "--viewers", "2",
         "--warmup-s", "0.5", "--duration-s", "1.5", "--json", str(out)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["watchers"] for r in rows] == ["none", "reading", "stalled", "none"]
    assert all(r["errors"] == 0 and r["turns_per_s"] > 0 for r in rows) and rows[0]["cpu_per_turn_ratio"] == 1.0

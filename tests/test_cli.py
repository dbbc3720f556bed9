"""``loopway serve``'s flags: repeatable ones, the environment, and what a bad value does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loopway.cli import build_parser, settings_from


def settings(*argv: str):
    return settings_from(build_parser().parse_args(["serve", *argv]))


def test_upstream_repeats_and_takes_comma_lists():
    assert settings("--upstream", "http://a/v1", "--upstream", "http://b/v1,http://c/v1").upstream == [
        "http://a/v1",
        "http://b/v1",
        "http://c/v1",
    ]
    assert settings().upstream == []


def test_upstream_from_the_environment_unless_the_flag_is_given(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LOOPWAY_UPSTREAM", "http://x/v1, http://y/v1")
    assert settings().upstream == ["http://x/v1", "http://y/v1"]
    assert settings("--upstream", "http://z/v1").upstream == ["http://z/v1"]


def test_routing_and_the_sims_capacity_flags():
    s = settings("--route", "round-robin", "--upstream-probe-s", "0", "--sim-kv-cache-tokens", "0",
                 "--sim-shared-prefill", "off", "--sim-decode-slowdown", "0.1")  # fmt: skip
    assert (s.route, s.upstream_probe_s) == ("round-robin", 0.0)
    assert (s.sim.kv_cache_tokens, s.sim.shared_prefill, s.sim.decode_slowdown) == (0, False, 0.1)
    defaults = settings()
    assert (defaults.route, defaults.sim.kv_cache_tokens, defaults.sim.shared_prefill) == ("affinity", 393_216, True)


def test_an_unknown_route_stops_the_server_with_its_message(tmp_path: Path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loopway",
            "serve",
            "--data-dir",
            str(tmp_path),
            "--engine",
            "openai-chat",
            "--upstream",
            "http://127.0.0.1:9/v1",
            "--upstream-model",
            "m",
            "--route",
            "random",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "unknown route 'random'" in done.stderr

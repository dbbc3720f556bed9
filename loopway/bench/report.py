"""Benchmark output: the table, the JSON document and the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from loopway.bench.runner import ModeResult

COMPONENTS = (("to_first_event_s", "network + server"), ("model_s", "model"), ("tool_s", "tools"), ("client_s", "client"))


def document(workload: str, link: str, results: dict[str, ModeResult]) -> dict[str, Any]:
    return {"workload": workload, "link": link, "modes": {m: msgspec.to_builtins(r) for m, r in results.items()}}


def table(workload: str, link: str, results: dict[str, ModeResult]) -> Table:
    out = Table(title=f"loopway bench: {workload} over {link}")
    for column in (
        "mode",
        "turns",
        "e2e s",
        "floor s",
        "overhead s",
        "e2e/floor",
        "up MB",
        "down MB",
        "server pre ms",
        "server post ms",
        "ws speedup",
    ):
        out.add_column(column, justify="left" if column == "mode" else "right")
    ws = results.get("ws")
    for mode, r in results.items():
        speedup = f"{r.e2e_s / ws.e2e_s:.2f}x" if ws and mode != "ws" else ""
        out.add_row(
            mode,
            str(r.turns),
            f"{r.e2e_s:.2f}",
            f"{r.floor_s:.2f}",
            f"{r.overhead_s:.2f}",
            f"{r.e2e_s / r.floor_s:.3f}",
            f"{r.bytes_up / 1e6:.2f}",
            f"{r.bytes_down / 1e6:.2f}",
            _ms(r.server_pre_ms_median),
            _ms(r.server_post_ms_median),
            speedup,
        )
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def plot(path: str | Path, workload: str, link: str, results: dict[str, ModeResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(results)
    mosaic = [[*modes, "e2e"], ["server"] * (len(modes) + 1)]
    fig, axes = plt.subplot_mosaic(mosaic, figsize=(5 * (len(modes) + 1), 8.5), gridspec_kw={"height_ratios": [3, 2]})
    top = max(max(t.total_s for t in r.per_turn) for r in results.values()) * 1.05
    for mode in modes:
        ax, turns = axes[mode], results[mode].per_turn
        x = [t.turn for t in turns]
        bottom = [0.0] * len(turns)
        for field, label in COMPONENTS:
            values = [getattr(t, field) for t in turns]
            ax.bar(x, values, bottom=bottom, label=label, width=0.85)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_title(f"{mode}: {results[mode].e2e_s:.1f} s")
        ax.set_xlabel("turn")
        ax.set_ylim(0, top)
    axes[modes[0]].set_ylabel("seconds per turn")
    axes[modes[0]].legend(loc="upper left", fontsize="small")
    summary = axes["e2e"]
    summary.bar(modes, [results[m].e2e_s for m in modes], color="tab:blue", label="end to end")
    summary.scatter(modes, [results[m].floor_s for m in modes], color="black", marker="_", s=600, label="floor", zorder=3)
    summary.set_title("end to end per mode")
    summary.set_ylabel("seconds")
    summary.legend(fontsize="small")
    summary.tick_params(axis="x", labelrotation=20)
    server = axes["server"]
    for mode in modes:
        turns = [t for t in results[mode].per_turn if t.server_pre_ms is not None]
        server.plot(
            [t.context_tokens for t in turns],
            [t.server_pre_ms + (t.server_post_ms or 0) for t in turns],
            marker="o",
            markersize=3,
            label=mode,
        )
    server.set_xlabel("context tokens")
    server.set_ylabel("server pre + post ms (engine excluded)")
    server.set_yscale("log")
    server.legend(fontsize="small")
    fig.suptitle(f"{workload} over {link}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(workload: str, link: str, results: dict[str, ModeResult]) -> None:
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)
    console.print(table(workload, link, results))

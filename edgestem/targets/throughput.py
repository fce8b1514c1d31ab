"""Throughput arithmetic: does a design keep up with a detector, and what would make it.

- A streaming design takes a new pattern every II cycles, so at clock f it sustains f / II patterns/s.
  A detector at R patterns/s leaves f / R cycles per pattern: the design keeps up when II <= f / R.
- Required speed-up S = R / (f / II) = R * II / f (S <= 1: it keeps up, with 1 / S headroom).
- FINN: the II is the slowest layer's cycle count (max_cycles). Every layer must finish a pattern in
  at most floor(f / R) cycles, so a layer of C cycles must be unfolded (PE x SIMD) by ceil(C / floor(f / R)).
- hls4ml: the II of io_stream layers grows about linearly with the reuse factor, so the reuse factor
  may be at most floor(RF / S) (an approximation; re-synthesise to confirm). Below RF = 1 reuse cannot
  help: ceil(S / RF) parallel copies of the encoder (patterns dealt round-robin) would be needed.

Used by ``edgestem budget`` (:mod:`edgestem.targets.budget`) and by the FINN backend, which folds
for a target frame rate.
"""

from __future__ import annotations

import math
from typing import Any

from edgestem.targets.boards import Board


def verdict(ii_cycles: int, clock_ns: float, rate_hz: float) -> dict[str, Any]:
    """Keep-up check of a design with initiation interval ``ii_cycles`` at ``clock_ns`` for ``rate_hz``."""
    clock_hz = 1e9 / clock_ns
    achieved = clock_hz / ii_cycles
    budget = clock_hz / rate_hz
    speedup = rate_hz / achieved
    return {
        "rate_hz": rate_hz,
        "frame_time_us": 1e6 / rate_hz,
        "achieved_fps": achieved,
        "cycles_per_frame_available": budget,
        "keeps_up": ii_cycles <= budget,
        "speedup_needed": speedup,
        "copies_needed": max(1, math.ceil(speedup - 1e-12)),
    }


def finn_folding(layers: dict[str, int], clock_ns: float, rate_hz: float) -> dict[str, Any]:
    """Per layer: by how much FINN's folding must drop its cycles (PE x SIMD up) so every layer fits the budget."""
    budget = math.floor(1e9 / clock_ns / rate_hz * (1 + 1e-12))  # an exact integer must not round down
    if budget < 1:
        return {
            "cycle_budget": budget,
            "layers_over_budget": {},
            "max_fold_factor": None,
            "note": "the detector delivers more than one pattern per clock cycle: folding alone cannot keep up",
        }
    over = {name: math.ceil(c / budget) for name, c in sorted(layers.items(), key=lambda kv: -kv[1]) if c > budget}
    return {
        "cycle_budget": budget,
        "layers_over_budget": over,
        "max_fold_factor": max(over.values()) if over else 1,
    }


def hls4ml_reuse(reuse_factor: int | None, speedup: float) -> dict[str, Any]:
    """The largest reuse factor that keeps up, assuming the II scales linearly with it."""
    if reuse_factor is None:
        change = f"must shrink {speedup:.3g}x" if speedup > 1 else f"could grow up to {1 / speedup:.3g}x"
        return {
            "reuse_factor": None,
            "max_reuse_factor": None,
            "note": f"reuse factor unknown (no hls4ml_config.yml): it {change}",
        }
    best = math.floor(reuse_factor / speedup + 1e-9)
    out: dict[str, Any] = {"reuse_factor": reuse_factor, "max_reuse_factor": best if best >= 1 else None}
    if best < 1:
        out["copies_at_rf1"] = math.ceil(speedup / reuse_factor - 1e-12)
        out["note"] = "even reuse factor 1 is too slow: parallel copies or a faster clock are needed"
    return out


def copies_that_fit(resources: dict[str, Any], board: Board | None) -> int | None:
    """How many copies of the design the board's resources hold (the scarcest resource decides)."""
    if board is None or board.resources is None:
        return None
    avail = board.resources.model_dump()
    ratios = [avail[k] / v for k, v in resources.items() if v and k in avail]
    return math.floor(min(ratios)) if ratios else None


__all__ = ["copies_that_fit", "finn_folding", "hls4ml_reuse", "verdict"]

"""The simulated engine: deterministic output from a policy, honest timing from a cost model."""

from loopway.engines.sim.engine import SimEngine, SimSettings

__all__ = ["SimEngine", "SimSettings"]

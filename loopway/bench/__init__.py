"""Benchmarks: what the API layer costs per turn, and what the transport buys."""

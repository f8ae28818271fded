"""Process-wide Prometheus histograms the worker feeds: step durations and claim latency."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

REGISTRY = CollectorRegistry()

STEP_SECONDS = Histogram(
    "baton_step_duration_seconds",
    "Wall time of step attempts run by this process",
    ["kind", "outcome"],
    registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600),
)

CLAIM_SECONDS = Histogram(
    "baton_claim_latency_seconds",
    "Time of one claim transaction",
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)

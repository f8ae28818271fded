"""The public exception tree (re-exported from baton.domain.errors)."""

from baton.domain.errors import (
    BatonError,
    ConcurrencyLimitReached,
    Conflict,
    IllegalTransition,
    InvalidFlow,
    InvalidInputs,
    LeaseLost,
    NotFound,
    RuntimeFailure,
    StepCancelled,
    StepFailed,
    StoreError,
    StoreUnavailable,
    UnknownFlow,
    UsageError,
)

__all__ = [
    "BatonError",
    "ConcurrencyLimitReached",
    "Conflict",
    "IllegalTransition",
    "InvalidFlow",
    "InvalidInputs",
    "LeaseLost",
    "NotFound",
    "RuntimeFailure",
    "StepCancelled",
    "StepFailed",
    "StoreError",
    "StoreUnavailable",
    "UnknownFlow",
    "UsageError",
]

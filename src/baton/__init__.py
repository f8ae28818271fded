"""Baton: a durable, observable, human-in-the-loop orchestrator for LLM agent workflows."""

from baton import errors
from baton.agents.base import Engine, StepContext, StepRequest, StepResult
from baton.domain.status import RunStatus, StepKind, StepStatus
from baton.flows.spec import Expansion, Finish, Flow, StepSpec

__all__ = [
    "Engine",
    "Expansion",
    "Finish",
    "Flow",
    "RunStatus",
    "StepContext",
    "StepKind",
    "StepRequest",
    "StepResult",
    "StepSpec",
    "StepStatus",
    "errors",
]
__version__ = "0.1.0"

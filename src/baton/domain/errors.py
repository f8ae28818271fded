"""The one exception tree: usage errors (4xx), runtime failures, and control-flow signals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class BatonError(Exception):
    """Something went wrong in Baton."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


# --- usage errors: the caller can fix them -------------------------------------------------


class UsageError(BatonError):
    """The request cannot be carried out as given."""

    status_code = 400


class NotFound(UsageError):
    """No such object."""

    status_code = 404


class UnknownFlow(UsageError):
    """No flow with that name is loaded."""

    def __init__(self, name: str, known: list[str]) -> None:
        listing = ", ".join(sorted(known)) or "none"
        super().__init__(
            f"unknown flow {name!r}: the loaded flows are {listing}. "
            "Load more with --flows MODULE_OR_FILE or BATON_FLOWS."
        )
        self.name = name
        self.known = list(known)

    status_code = 422

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.name, self.known))


class InvalidInputs(UsageError):
    """The inputs do not match the schema."""

    status_code = 422

    def __init__(self, message: str, problems: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class InvalidFlow(UsageError):
    """The flow definition is not valid."""

    status_code = 422


class InvalidDeclarations(InvalidFlow):
    """Declarations are not valid; `problems` lists each as `file:line: …`."""

    #: what was declared, for the message: "the agent declarations", "the YAML flows"…
    subject = "the declarations"

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            listing = "\n".join(f"  {problem}" for problem in self.problems)
            message = f"{len(self.problems)} problems in {self.subject}:\n{listing}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems,))


class IllegalTransition(UsageError):
    """That status change is not allowed now."""

    status_code = 409

    def __init__(self, object_id: str, current: str, target: str, action: str = "") -> None:
        what = action or f"move to {target}"
        super().__init__(f"cannot {what} {object_id}: it is {current}")
        self.object_id = object_id
        self.current = current
        self.target = target

        self.action = action

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.object_id, self.current, self.target, self.action))


class Conflict(UsageError):
    """The request conflicts with the current state."""

    status_code = 409


class PolicyDenied(UsageError):
    """The policy in force does not allow this."""

    status_code = 403


class Unauthorized(UsageError):
    """No valid credentials were given."""

    status_code = 401


class Forbidden(UsageError):
    """The caller may see this but not do that."""

    status_code = 403


class ConcurrencyLimitReached(Conflict):
    """The run's concurrency key is full and its strategy is `reject`."""


# --- runtime failures: the system or the outside world failed ------------------------------


class RuntimeFailure(BatonError):
    """Baton could not carry out the work."""


class StoreUnavailable(RuntimeFailure):
    """The database cannot be reached."""


class StoreError(RuntimeFailure):
    """The database refused an operation."""


class LeaseLost(RuntimeFailure):
    """This worker no longer holds the step's lease; its writes are refused."""


class StepFailed(RuntimeFailure):
    """A step failed."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_step_failed, (self.message, self.retryable))


def _rebuild_step_failed(message: str, retryable: bool) -> StepFailed:
    return StepFailed(message, retryable=retryable)


# --- control-flow signals ------------------------------------------------------------------


class StepCancelled(BatonError):
    """The step was cancelled."""

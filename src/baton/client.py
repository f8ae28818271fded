"""A Python client for Baton's HTTP API, sync and async; `stream()` resumes by itself."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from baton.domain import errors

TERMINAL = ("succeeded", "failed", "cancelled")
TERMINAL_EVENTS = ("run.succeeded", "run.failed", "run.cancelled")

_BY_STATUS: dict[int, type[errors.BatonError]] = {
    400: errors.UsageError,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.UsageError,
    422: errors.InvalidInputs,
    429: errors.UsageError,
}


def _seg(value: str) -> str:
    """One path segment: an id as typed cannot reach another route."""
    return quote(str(value), safe="")


def _problem(response: httpx.Response) -> dict[str, Any]:
    """The problem+json body of an error response, or {} when the server sent something else."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _raise_for(response: httpx.Response) -> None:
    """Turn an error response into the BatonError its problem+json describes (4xx: a UsageError)."""
    if response.status_code < 400:
        return
    body = _problem(response)
    detail = body.get("detail")
    if not isinstance(detail, str) or not detail.strip():
        # Not a Baton problem (a proxy, another server): its status and the start of its text.
        text = " ".join(response.text.split())
        detail = f"{response.status_code} {response.reason_phrase}" + (f": {text[:200]}" if text else "")
    if response.status_code >= 500:
        if response.status_code == 503 and body.get("title") == "Database unavailable":
            raise errors.StoreUnavailable(f"the server's database is unavailable: {detail}")
        raise errors.RuntimeFailure(f"the server failed ({response.status_code}): {detail}")
    cls = _BY_STATUS.get(response.status_code, errors.UsageError)
    if response.status_code == 403 and body.get("title") == "Denied by policy":
        cls = errors.PolicyDenied
    if cls is errors.InvalidInputs:
        found = body.get("errors")
        problems = [p for p in found if isinstance(p, dict)] if isinstance(found, list) else []
        raise errors.InvalidInputs(detail, problems)
    raise cls(detail)


def _parse_frames(lines: Iterator[str]) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """(id, data) of each complete SSE frame; comment lines (keep-alives) are skipped."""
    event_id: str | None = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield event_id, json.loads("\n".join(data))
            event_id, data = None, []
        elif line.startswith(":"):
            continue
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


class Client:
    """`Client("http://127.0.0.1:8000", token)`: typed calls; errors raise Baton's exception tree."""

    def __init__(self, server: str, token: str, *, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self._http = httpx.Client(
            base_url=self.server, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise errors.StoreUnavailable(
                f"cannot reach the Baton server at {self.server}: {error}"
            ) from error
        _raise_for(response)
        if not response.headers.get("content-type", "").startswith(
            ("application/json", "application/problem")
        ):
            return response.content
        try:
            return response.json()
        except ValueError as error:
            raise errors.RuntimeFailure(
                f"the server at {self.server} sent a response that is not valid JSON: is it a Baton server?"
            ) from error

    # --- runs -----------------------------------------------------------------------------

    def create_run(self, flow: str, inputs: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        return self._call("POST", "/v1/runs", json={"flow": flow, "inputs": dict(inputs or {}), **fields})

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/runs/{_seg(run_id)}")

    def list_runs(self, **filters: Any) -> dict[str, Any]:
        return self._call("GET", "/v1/runs", params={k: v for k, v in filters.items() if v is not None})

    def confirm(self, run_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/runs/{_seg(run_id)}/confirm", json={})

    def cancel(self, run_id: str, reason: str = "") -> dict[str, Any]:
        return self._call("POST", f"/v1/runs/{_seg(run_id)}/cancel", json={"reason": reason})

    def retry(self, run_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/runs/{_seg(run_id)}/retry", json={})

    def resume(self, run_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/runs/{_seg(run_id)}/resume", json={})

    def fork(self, run_id: str, from_step: str, inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"from_step": from_step}
        if inputs is not None:
            body["inputs"] = dict(inputs)
        return self._call("POST", f"/v1/runs/{_seg(run_id)}/fork", json=body)

    def events(self, run_id: str, after: int = 0, limit: int = 1000) -> dict[str, Any]:
        return self._call("GET", f"/v1/runs/{_seg(run_id)}/events", params={"after": after, "limit": limit})

    def inputs(self, status: str = "pending") -> list[dict[str, Any]]:
        return self._call("GET", "/v1/inputs", params={"status": status})

    def answer(self, request_id: str, answer: Any) -> dict[str, Any]:
        return self._call("POST", f"/v1/inputs/{_seg(request_id)}/answer", json={"answer": answer})

    def flows(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/flows")

    def flow(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/flows/{_seg(name)}")

    # --- live ---------------------------------------------------------------------------------

    def stream(self, run_id: str, after: int = 0, *, reconnect_s: float = 0.5) -> Iterator[dict[str, Any]]:
        """Every event of the run after `after`, live; reconnects with Last-Event-ID until the run ends."""
        last = after
        while True:
            try:
                with self._http.stream(
                    "GET",
                    f"/v1/runs/{_seg(run_id)}/stream",
                    headers={"Last-Event-ID": str(last), "Accept": "text/event-stream"},
                    timeout=httpx.Timeout(30.0, read=60.0),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        _raise_for(response)
                    for event_id, data in _parse_frames(response.iter_lines()):
                        if event_id is not None:
                            last = int(event_id)
                        yield data
                        if data.get("type") in TERMINAL_EVENTS and self.get_run(run_id)["status"] in TERMINAL:
                            return
                    # The server closed a finished run's stream.
                    if (
                        self.get_run(run_id)["status"] in TERMINAL
                        and not self.events(run_id, last, 1)["events"]
                    ):
                        return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                time.sleep(reconnect_s)

    def wait(self, run_id: str, timeout: float | None = None, poll_s: float = 0.5) -> dict[str, Any]:
        """Block until the run is finished (or `timeout` passes, raising TimeoutError)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.get_run(run_id)
            if run["status"] in TERMINAL:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {run['status']} after {timeout} s")
            time.sleep(poll_s)


class AsyncClient:
    """The async twin of `Client`, for asyncio programs."""

    def __init__(self, server: str, token: str, *, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.server, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise errors.StoreUnavailable(
                f"cannot reach the Baton server at {self.server}: {error}"
            ) from error
        _raise_for(response)
        return response.json()

    async def create_run(
        self, flow: str, inputs: Mapping[str, Any] | None = None, **fields: Any
    ) -> dict[str, Any]:
        return await self._call(
            "POST", "/v1/runs", json={"flow": flow, "inputs": dict(inputs or {}), **fields}
        )

    async def get_run(self, run_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/runs/{_seg(run_id)}")

    async def cancel(self, run_id: str, reason: str = "") -> dict[str, Any]:
        return await self._call("POST", f"/v1/runs/{_seg(run_id)}/cancel", json={"reason": reason})

    async def answer(self, request_id: str, answer: Any) -> dict[str, Any]:
        return await self._call("POST", f"/v1/inputs/{_seg(request_id)}/answer", json={"answer": answer})

    async def stream(
        self, run_id: str, after: int = 0, *, reconnect_s: float = 0.5
    ) -> AsyncIterator[dict[str, Any]]:
        last = after
        while True:
            try:
                async with self._http.stream(
                    "GET",
                    f"/v1/runs/{_seg(run_id)}/stream",
                    headers={"Last-Event-ID": str(last), "Accept": "text/event-stream"},
                    timeout=httpx.Timeout(30.0, read=60.0),
                ) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        _raise_for(response)
                    buffer: list[str] = []
                    async for line in response.aiter_lines():
                        buffer.append(line)
                        if line == "":
                            for event_id, data in _parse_frames(iter(buffer)):
                                if event_id is not None:
                                    last = int(event_id)
                                yield data
                                if (
                                    data.get("type") in TERMINAL_EVENTS
                                    and (await self.get_run(run_id))["status"] in TERMINAL
                                ):
                                    return
                            buffer = []
                    if (await self.get_run(run_id))["status"] in TERMINAL:
                        return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                await asyncio.sleep(reconnect_s)

    async def wait(self, run_id: str, timeout: float | None = None, poll_s: float = 0.5) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = await self.get_run(run_id)
            if run["status"] in TERMINAL:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {run['status']} after {timeout} s")
            await asyncio.sleep(poll_s)

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


def _keyed(idempotency_key: str | None) -> dict[str, str]:
    """The `Idempotency-Key` header: a retry with the same key gets the first answer, not a 409."""
    return {"Idempotency-Key": idempotency_key} if idempotency_key else {}


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

    def _raw(self, path: str, **kwargs: Any) -> httpx.Response:
        """A response whose body is content, not JSON (artifacts, Markdown, metrics)."""
        try:
            response = self._http.get(path, **kwargs)
        except httpx.HTTPError as error:
            raise errors.StoreUnavailable(
                f"cannot reach the Baton server at {self.server}: {error}"
            ) from error
        _raise_for(response)
        return response

    # --- runs -----------------------------------------------------------------------------

    def create_run(self, flow: str, inputs: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        return self._call("POST", "/v1/runs", json={"flow": flow, "inputs": dict(inputs or {}), **fields})

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/runs/{_seg(run_id)}")

    def list_runs(self, **filters: Any) -> dict[str, Any]:
        return self._call("GET", "/v1/runs", params={k: v for k, v in filters.items() if v is not None})

    def confirm(self, run_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/runs/{_seg(run_id)}/confirm", json={})

    def cancel(self, run_id: str, reason: str = "", *, idempotency_key: str | None = None) -> dict[str, Any]:
        path, headers = f"/v1/runs/{_seg(run_id)}/cancel", _keyed(idempotency_key)
        return self._call("POST", path, json={"reason": reason}, headers=headers)

    def retry(self, run_id: str, *, idempotency_key: str | None = None) -> dict[str, Any]:
        path, headers = f"/v1/runs/{_seg(run_id)}/retry", _keyed(idempotency_key)
        return self._call("POST", path, json={}, headers=headers)

    def resume(self, run_id: str, *, idempotency_key: str | None = None) -> dict[str, Any]:
        path, headers = f"/v1/runs/{_seg(run_id)}/resume", _keyed(idempotency_key)
        return self._call("POST", path, json={}, headers=headers)

    def fork(self, run_id: str, from_step: str, inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"from_step": from_step}
        if inputs is not None:
            body["inputs"] = dict(inputs)
        return self._call("POST", f"/v1/runs/{_seg(run_id)}/fork", json=body)

    def events(self, run_id: str, after: int = 0, limit: int = 1000) -> dict[str, Any]:
        return self._call("GET", f"/v1/runs/{_seg(run_id)}/events", params={"after": after, "limit": limit})

    def inputs(self, status: str = "pending") -> list[dict[str, Any]]:
        return self._call("GET", "/v1/inputs", params={"status": status})

    def answer(self, request_id: str, answer: Any, *, idempotency_key: str | None = None) -> dict[str, Any]:
        path, headers = f"/v1/inputs/{_seg(request_id)}/answer", _keyed(idempotency_key)
        return self._call("POST", path, json={"answer": answer}, headers=headers)

    def flows(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/flows")

    def flow(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/flows/{_seg(name)}")

    def agents(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/agents")

    # --- artifacts, export, health ------------------------------------------------------------

    def artifacts(self, run_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/v1/runs/{_seg(run_id)}/artifacts")

    def artifact(self, run_id: str, artifact_id: str) -> bytes:
        """An artifact's raw content (its media type is in `artifacts()`)."""
        return self._raw(f"/v1/runs/{_seg(run_id)}/artifacts/{_seg(artifact_id)}").content

    def export(self, run_id: str) -> dict[str, Any]:
        """The whole run as one JSON document: run, steps, input requests, events, artifacts."""
        return self._call("GET", f"/v1/runs/{_seg(run_id)}/export", params={"format": "json"})

    def export_markdown(self, run_id: str) -> str:
        return self._raw(f"/v1/runs/{_seg(run_id)}/export", params={"format": "md"}).text

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")

    # --- webhooks (docs/webhooks.md) --------------------------------------------------------------

    def create_webhook(
        self, project_id: str, url: str, event_types: list[str] | None = None, **fields: Any
    ) -> dict[str, Any]:
        """The new webhook, with its signing `secret` (shown this once)."""
        body = {"project_id": project_id, "url": url, "event_types": event_types or ["*"], **fields}
        return self._call("POST", "/v1/webhooks", json=body)

    def list_webhooks(self, project_id: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/webhooks", params={"project_id": project_id} if project_id else {})

    def get_webhook(self, webhook_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/webhooks/{_seg(webhook_id)}")

    def update_webhook(self, webhook_id: str, **fields: Any) -> dict[str, Any]:
        """Change `url`, `event_types`, `description` or `active`."""
        return self._call("PATCH", f"/v1/webhooks/{_seg(webhook_id)}", json=fields)

    def delete_webhook(self, webhook_id: str) -> None:
        self._call("DELETE", f"/v1/webhooks/{_seg(webhook_id)}")

    def webhook_deliveries(
        self, webhook_id: str, *, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
        return self._call("GET", f"/v1/webhooks/{_seg(webhook_id)}/deliveries", params=params)

    def ping_webhook(self, webhook_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/webhooks/{_seg(webhook_id)}/ping")

    def redeliver(self, webhook_id: str, delivery_id: str) -> dict[str, Any]:
        path = f"/v1/webhooks/{_seg(webhook_id)}/deliveries/{_seg(delivery_id)}/redeliver"
        return self._call("POST", path)

    # --- schedules (docs/schedules.md) -------------------------------------------------------------

    def create_schedule(
        self,
        flow: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        cron: str | None = None,
        interval_s: float | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A schedule of `flow`: give `cron` (with `timezone=`) or `interval_s`; see ScheduleCreate."""
        body = {"flow": flow, "inputs": dict(inputs or {}), "cron": cron, "interval_s": interval_s, **fields}
        return self._call("POST", "/v1/schedules", json=body)

    def list_schedules(self, project_id: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/schedules", params={"project_id": project_id} if project_id else {})

    def get_schedule(self, schedule_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/schedules/{_seg(schedule_id)}")

    def pause_schedule(self, schedule_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/schedules/{_seg(schedule_id)}/pause")

    def resume_schedule(self, schedule_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/schedules/{_seg(schedule_id)}/resume")

    def delete_schedule(self, schedule_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/schedules/{_seg(schedule_id)}")

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
            except (httpx.TransportError, errors.StoreUnavailable):
                # The server went away (restart, network): reconnect from the last id we saw.
                time.sleep(reconnect_s)

    def wait(self, run_id: str, timeout: float | None = None, poll_s: float = 0.5) -> dict[str, Any]:
        """Block until the run is finished (or `timeout` passes, raising TimeoutError).

        A server that is briefly unreachable (restarting) is waited for, within `timeout`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        status = "unknown (the server is unreachable)"
        while True:
            try:
                run = self.get_run(run_id)
            except errors.StoreUnavailable:
                run = None
            if run is not None:
                status = run["status"]
                if status in TERMINAL:
                    return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {status} after {timeout} s")
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
        if response.status_code == 204:
            return None
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

    async def create_run(
        self, flow: str, inputs: Mapping[str, Any] | None = None, **fields: Any
    ) -> dict[str, Any]:
        return await self._call(
            "POST", "/v1/runs", json={"flow": flow, "inputs": dict(inputs or {}), **fields}
        )

    async def get_run(self, run_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/runs/{_seg(run_id)}")

    async def cancel(
        self, run_id: str, reason: str = "", *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        path, headers = f"/v1/runs/{_seg(run_id)}/cancel", _keyed(idempotency_key)
        return await self._call("POST", path, json={"reason": reason}, headers=headers)

    async def answer(
        self, request_id: str, answer: Any, *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        path, headers = f"/v1/inputs/{_seg(request_id)}/answer", _keyed(idempotency_key)
        return await self._call("POST", path, json={"answer": answer}, headers=headers)

    async def list_runs(self, **filters: Any) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v is not None}
        return await self._call("GET", "/v1/runs", params=params)

    async def confirm(self, run_id: str) -> dict[str, Any]:
        return await self._call("POST", f"/v1/runs/{_seg(run_id)}/confirm", json={})

    async def retry(self, run_id: str, *, idempotency_key: str | None = None) -> dict[str, Any]:
        path, headers = f"/v1/runs/{_seg(run_id)}/retry", _keyed(idempotency_key)
        return await self._call("POST", path, json={}, headers=headers)

    async def resume(self, run_id: str, *, idempotency_key: str | None = None) -> dict[str, Any]:
        path, headers = f"/v1/runs/{_seg(run_id)}/resume", _keyed(idempotency_key)
        return await self._call("POST", path, json={}, headers=headers)

    async def fork(
        self, run_id: str, from_step: str, inputs: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"from_step": from_step}
        if inputs is not None:
            body["inputs"] = dict(inputs)
        return await self._call("POST", f"/v1/runs/{_seg(run_id)}/fork", json=body)

    async def events(self, run_id: str, after: int = 0, limit: int = 1000) -> dict[str, Any]:
        params = {"after": after, "limit": limit}
        return await self._call("GET", f"/v1/runs/{_seg(run_id)}/events", params=params)

    async def inputs(self, status: str = "pending") -> list[dict[str, Any]]:
        return await self._call("GET", "/v1/inputs", params={"status": status})

    async def flows(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/v1/flows")

    async def flow(self, name: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/flows/{_seg(name)}")

    async def agents(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/v1/agents")

    async def artifacts(self, run_id: str) -> list[dict[str, Any]]:
        return await self._call("GET", f"/v1/runs/{_seg(run_id)}/artifacts")

    async def artifact(self, run_id: str, artifact_id: str) -> bytes:
        return (await self._raw(f"/v1/runs/{_seg(run_id)}/artifacts/{_seg(artifact_id)}")).content

    async def export(self, run_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/runs/{_seg(run_id)}/export", params={"format": "json"})

    async def export_markdown(self, run_id: str) -> str:
        return (await self._raw(f"/v1/runs/{_seg(run_id)}/export", params={"format": "md"})).text

    async def health(self) -> dict[str, Any]:
        return await self._call("GET", "/healthz")

    async def _raw(self, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.get(path, **kwargs)
        except httpx.HTTPError as error:
            raise errors.StoreUnavailable(
                f"cannot reach the Baton server at {self.server}: {error}"
            ) from error
        _raise_for(response)
        return response

    async def create_webhook(
        self, project_id: str, url: str, event_types: list[str] | None = None, **fields: Any
    ) -> dict[str, Any]:
        body = {"project_id": project_id, "url": url, "event_types": event_types or ["*"], **fields}
        return await self._call("POST", "/v1/webhooks", json=body)

    async def list_webhooks(self, project_id: str | None = None) -> list[dict[str, Any]]:
        params = {"project_id": project_id} if project_id else {}
        return await self._call("GET", "/v1/webhooks", params=params)

    async def delete_webhook(self, webhook_id: str) -> None:
        try:
            response = await self._http.delete(f"/v1/webhooks/{_seg(webhook_id)}")
        except httpx.HTTPError as error:
            raise errors.StoreUnavailable(
                f"cannot reach the Baton server at {self.server}: {error}"
            ) from error
        _raise_for(response)  # 204: no body to parse

    async def webhook_deliveries(
        self, webhook_id: str, *, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit, **({"status": status} if status else {})}
        return await self._call("GET", f"/v1/webhooks/{_seg(webhook_id)}/deliveries", params=params)

    async def create_schedule(
        self,
        flow: str,
        inputs: Mapping[str, Any] | None = None,
        *,
        cron: str | None = None,
        interval_s: float | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        body = {"flow": flow, "inputs": dict(inputs or {}), "cron": cron, "interval_s": interval_s, **fields}
        return await self._call("POST", "/v1/schedules", json=body)

    async def list_schedules(self, project_id: str | None = None) -> list[dict[str, Any]]:
        params = {"project_id": project_id} if project_id else {}
        return await self._call("GET", "/v1/schedules", params=params)

    async def get_schedule(self, schedule_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/schedules/{_seg(schedule_id)}")

    async def pause_schedule(self, schedule_id: str) -> dict[str, Any]:
        return await self._call("POST", f"/v1/schedules/{_seg(schedule_id)}/pause")

    async def resume_schedule(self, schedule_id: str) -> dict[str, Any]:
        return await self._call("POST", f"/v1/schedules/{_seg(schedule_id)}/resume")

    async def delete_schedule(self, schedule_id: str) -> dict[str, Any]:
        return await self._call("DELETE", f"/v1/schedules/{_seg(schedule_id)}")

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
            except (httpx.TransportError, errors.StoreUnavailable):
                await asyncio.sleep(reconnect_s)

    async def wait(self, run_id: str, timeout: float | None = None, poll_s: float = 0.5) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        status = "unknown (the server is unreachable)"
        while True:
            try:
                run = await self.get_run(run_id)
            except errors.StoreUnavailable:
                run = None
            if run is not None:
                status = run["status"]
                if status in TERMINAL:
                    return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {status} after {timeout} s")
            await asyncio.sleep(poll_s)

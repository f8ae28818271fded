"""A scripted OpenAI chat-completions server on loopback, so model engines are tested over the real wire.

The code under test talks to it through the real OpenAI client: real HTTP/1.1, real JSON bodies and
real `stream: true` server-sent events, with the usage in a final chunk when the client asks for it
through `stream_options.include_usage` (as OpenAI does). Each request takes the next `Reply` from the
script; every request is recorded (headers and body) so that tests can check what reached the model.

Fault modes: an HTTP error status (500, 429 with `Retry-After`, 401 …), `hang()` (never answer) and
`stall(...)` (stream some chunks, then go silent). While hanging or stalling the server watches the
socket, so a test can check that the client really closed the connection (`wait_for_disconnect`).

It is a stdlib `ThreadingHTTPServer` in a background thread: no event loop is shared with the test.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    """A function call the scripted model makes."""

    name: str
    arguments: Mapping[str, Any]
    id: str = "call_1"


@dataclass(frozen=True)
class Reply:
    """One scripted answer. Build it with `text`, `tool_calls`, `error`, `hang` or `stall`."""

    chunks: tuple[str, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    input_tokens: int = 10
    output_tokens: int = 5
    status: int = 200
    error_body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: accept the request and never send a status line
    hang: bool = False
    #: send the chunks, then keep the stream open without ending it
    stall: bool = False
    #: seconds to wait before each streamed chunk
    chunk_delay: float = 0.0
    #: send the chunks, then drop the connection without ending the stream (a mid-stream disconnect)
    disconnect: bool = False


def text(*chunks: str, input_tokens: int = 10, output_tokens: int | None = None, delay: float = 0.0) -> Reply:
    """Answer with text, streamed as one SSE chunk per argument."""
    out = len(chunks) if output_tokens is None else output_tokens
    return Reply(chunks=chunks, input_tokens=input_tokens, output_tokens=out, chunk_delay=delay)


def tool_calls(*calls: ToolCall, input_tokens: int = 10, output_tokens: int = 5) -> Reply:
    """Answer with function calls (finish_reason `tool_calls`)."""
    return Reply(tool_calls=calls, input_tokens=input_tokens, output_tokens=output_tokens)


def error(status: int, message: str = "fake server error", headers: Mapping[str, str] | None = None) -> Reply:
    """Answer with an HTTP error and an OpenAI-style error body."""
    kind = "rate_limit_exceeded" if status == 429 else "server_error" if status >= 500 else "invalid_request"
    body = {"error": {"message": message, "type": kind, "param": None, "code": kind}}
    return Reply(status=status, error_body=body, headers=dict(headers or {}))


def hang() -> Reply:
    """Never answer: the client's timeout or cancellation must end the request."""
    return Reply(hang=True)


def disconnect(*chunks: str) -> Reply:
    """Stream the chunks, then close the connection abruptly, mid-stream."""
    return Reply(chunks=chunks, disconnect=True)


def stall(*chunks: str) -> Reply:
    """Stream these chunks, then go silent with the stream still open."""
    return Reply(chunks=chunks, stall=True)


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the server received it."""

    method: str
    path: str
    #: header names lowercased
    headers: Mapping[str, str]
    body: Mapping[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))

    def text_of(self, role: str) -> str:
        """All text sent with this role, joined by newlines."""
        parts: list[str] = []
        for message in self.messages:
            if message.get("role") != role:
                continue
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(str(item.get("text", "")) for item in content if isinstance(item, dict))
        return "\n".join(parts)

    @property
    def tool_names(self) -> list[str]:
        return [tool["function"]["name"] for tool in self.body.get("tools", [])]


class _Disconnected(Exception):
    """The client closed the connection while the server was answering."""


class FakeOpenAIServer:
    """Serve `/v1/chat/completions` (any path ending in `chat/completions`) from a queue of replies.

    Use as a context manager, or call `start()` and `stop()`. When the script runs out the server
    answers 500 with a message saying so, so a test that forgot a reply fails visibly.
    """

    def __init__(self, *replies: Reply, model: str = "fake-model") -> None:
        self.model = model
        self.requests: list[RecordedRequest] = []
        self.disconnects = 0
        self._script: deque[Reply] = deque(replies)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._disconnected = threading.Condition(self._lock)
        self._received = threading.Condition(self._lock)
        self._sockets: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeOpenAIServer:
        handler = _make_handler(self)
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False  # idle keep-alive connections must not delay stop()
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        with self._lock:
            for sock in list(self._sockets):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start() the server first"
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (ends in /v1)."""
        return f"http://127.0.0.1:{self.port}/v1"

    # --- script and observations ---------------------------------------------------------------

    def add(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    @property
    def pending(self) -> int:
        """Scripted replies not yet used."""
        with self._lock:
            return len(self._script)

    @property
    def last(self) -> RecordedRequest:
        return self.requests[-1]

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        with self._received:
            return self._received.wait_for(lambda: len(self.requests) >= count, timeout)

    def wait_for_disconnect(self, timeout: float = 5.0) -> bool:
        """True once a client closed its connection while a reply was in progress."""
        with self._disconnected:
            return self._disconnected.wait_for(lambda: self.disconnects > 0, timeout)

    # --- used by the handler -------------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> Reply | None:
        with self._received:
            self.requests.append(request)
            self._received.notify_all()
            return self._script.popleft() if self._script else None

    def _note_disconnect(self) -> None:
        with self._disconnected:
            self.disconnects += 1
            self._disconnected.notify_all()

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._sockets.add(sock)
            else:
                self._sockets.discard(sock)


def _make_handler(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        fake = server

    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeOpenAIServer

    def setup(self) -> None:
        super().setup()
        self.fake._track(self.connection, add=True)

    def finish(self) -> None:
        self.fake._track(self.connection, add=False)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the tests assert on records
        pass

    def do_GET(self) -> None:
        self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = self.fake._record(RecordedRequest("POST", self.path, headers, body))
        if not self.path.rstrip("/").endswith("chat/completions"):
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        if reply is None:
            reply = error(500, "fake server: the script has no reply left for this request")
        try:
            self._answer(reply, body)
        except _Disconnected:
            self.fake._note_disconnect()
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.fake._note_disconnect()
            self.close_connection = True

    # --- answers -------------------------------------------------------------------------------

    def _answer(self, reply: Reply, body: Mapping[str, Any]) -> None:
        if reply.hang:
            self._wait_until_client_leaves()
            return
        if reply.status != 200:
            self._send_json(reply.status, dict(reply.error_body or {}), reply.headers)
            return
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(reply, include_usage)
        else:
            self._send_json(200, self._completion(reply))

    def _send_json(
        self, status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _stream(self, reply: Reply, include_usage: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in self._events(reply, include_usage):
            if event is _STALL:
                self._wait_until_client_leaves()
                return
            if event is _DISCONNECT:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if reply.chunk_delay:
                self._sleep_watching(reply.chunk_delay)
            self._write_chunk(f"data: {json.dumps(event)}\n\n".encode())
        self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")

    def _events(self, reply: Reply, include_usage: bool) -> Iterator[Any]:
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time())}
        base["model"] = self.fake.model

        def chunk(delta: Mapping[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": dict(delta), "finish_reason": finish}]}

        yield chunk({"role": "assistant", "content": ""})
        for piece in reply.chunks:
            yield chunk({"content": piece})
        if reply.stall:
            yield _STALL
        if reply.disconnect:
            yield _DISCONNECT
        for index, call in enumerate(reply.tool_calls):
            start = {"index": index, "id": call.id, "type": "function"}
            yield chunk({"tool_calls": [{**start, "function": {"name": call.name, "arguments": ""}}]})
            arguments = json.dumps(dict(call.arguments))
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})
        yield chunk({}, "tool_calls" if reply.tool_calls else "stop")
        if include_usage:
            yield {**base, "choices": [], "usage": _usage(reply)}

    def _completion(self, reply: Reply) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(reply.chunks) or None}
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": json.dumps(dict(call.arguments))},
                }
                for call in reply.tool_calls
            ]
        finish = "tool_calls" if reply.tool_calls else "stop"
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.fake.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": _usage(reply),
        }

    # --- socket helpers ------------------------------------------------------------------------

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _client_left(self, wait: float) -> bool:
        """Wait up to `wait` seconds; True when the client has closed its side of the connection."""
        readable, _, _ = select.select([self.connection], [], [], wait)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _wait_until_client_leaves(self) -> None:
        while not self.fake._stopping.is_set():
            if self._client_left(0.02):
                raise _Disconnected
        self.close_connection = True

    def _sleep_watching(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._client_left(min(left, 0.02)):
                raise _Disconnected


_STALL = object()
_DISCONNECT = object()


def _usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
    }

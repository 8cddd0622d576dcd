"""The server's edge, outside routing: the health fast path, the body limit and body timeout, and a
uvicorn protocol with a header timeout (a client that never finishes its headers is closed)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

__all__ = ["Edge", "header_timeout_protocol", "json_bytes", "send_json"]


def json_bytes(obj: Any) -> bytes:
    """JSON that any client can read: ASCII-escaped (a lone surrogate cannot break encoding), no NaN."""
    return json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class Edge:
    """Outermost ASGI middleware.

    ``GET /health`` is answered here, before routing, validation and the batcher. Every other
    request's body is read whole (413 beyond ``max_bytes``; 408 when it has not all arrived within
    ``body_timeout`` seconds of the headers) and replayed to the app.
    """

    def __init__(self, app: Any, max_bytes: int, body_timeout: float, health: Any = None):
        self.app, self.max_bytes, self.body_timeout, self.health = app, max_bytes, body_timeout, health

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.health is not None and scope.get("path") == "/health" and scope.get("method") in ("GET", "HEAD"):
            await send_json(send, 200, self.health())
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        try:
            too_big = declared is not None and int(declared) > self.max_bytes
        except ValueError:
            await send_json(send, 400, {"error": "invalid Content-Length header", "status": 400})
            return
        if too_big:
            await send_json(send, 413, body_too_big(self.max_bytes), close=True)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        chunks, size, more = [], 0, True
        while more:
            try:
                msg = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                await send_json(send, 408, {"error": f"request body not received within {self.body_timeout:g} s",
                                             "status": 408}, close=True)
                return
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await send_json(send, 413, body_too_big(self.max_bytes), close=True)
                return
            chunks.append(body)
            more = msg.get("more_body", False)
        data, sent = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def body_too_big(limit: int) -> dict[str, Any]:
    return {"error": f"request body over the limit of {limit} bytes", "status": 413}


async def send_json(send: Any, status: int, obj: dict[str, Any], close: bool = False) -> None:
    body = json_bytes(obj)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # the rest of the body will not be read: the connection cannot be reused
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def header_timeout_protocol(header_timeout: float) -> type:
    """uvicorn's h11 protocol with a header timeout: 408 and close when a request's headers take longer.

    The clock starts when the connection opens and again after each response; it stops when
    h11 has the complete request head (uvicorn has only a keep-alive timeout, which the first
    byte of a request cancels).
    """
    import h11  # start-up time: uvicorn and its HTTP parser load only when serving
    from uvicorn.protocols.http.h11_impl import H11Protocol

    message = json_bytes({"error": f"request headers not received within {header_timeout:g} s", "status": 408})
    response = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(message)).encode() + b"\r\nconnection: close\r\n\r\n" + message)

    class HeaderTimeoutH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(header_timeout, self._header_timed_out)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._cancel_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            self.transport.write(response)
            self.transport.close()

    return HeaderTimeoutH11Protocol

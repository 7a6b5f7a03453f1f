"""Request handling every serving route shares: the bounded body read, timing, encoding, errors.

* :func:`read_body` reads a request body up to a limit (:class:`TooLarge` beyond it);
* :func:`timing` is the ``Server-Timing: app;dur=<ms>`` header of a timed answer;
* :data:`ENCODER` renders answers (msgspec: floats round-trip exactly, and 10,000
  predictions take about a millisecond);
* :func:`scored` runs a scoring step on the event loop or on a worker thread;
* :class:`Answer` is a scoring route's ``200`` answer, its headers put together once;
* :func:`refusal` is a refusal's answer: its JSON body with the timing header;
* :func:`direct` serves one route's POSTs without FastAPI's routing and middleware.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

#: Bodies up to this size (a few dozen customers) are scored on the event loop when the
#: ONNX graph serves: scoring them costs less than handing them to a worker thread.
#: Larger bodies, and every body a scikit-learn pipeline scores, go to a worker thread so
#: that they never block the loop.
INLINE_BODY_BYTES = 16 * 1024
#: The encoder of every answer a route renders itself.
ENCODER = msgspec.json.Encoder()

Result = TypeVar("Result")


class TooLarge(Exception):
    """A request body over its limit; the message says so in one line (answered 413)."""


async def read_body(request: Request, limit: int, *, declared: bool = True) -> bytearray:
    """The request body, at most ``limit`` bytes.

    Raises :class:`TooLarge` as soon as more arrives, or before reading anything when
    ``declared`` and the ``Content-Length`` header announces more.
    """
    if declared:
        length = request.headers.get("content-length", "").strip()
        if length.isdigit() and int(length) > limit:
            raise TooLarge(f"the request body is {int(length)} bytes; the limit is {limit} bytes")
    body = bytearray()
    receive = request.receive  # the ASGI messages themselves: request.stream() is an async
    while True:  # generator, and setting one up costs more than reading a one-customer body
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        body += message.get("body", b"")
        if len(body) > limit:
            raise TooLarge(f"the request body exceeds the limit of {limit} bytes")
        if not message.get("more_body", False):
            return body


def timing(started: float) -> dict[str, str]:
    """The ``Server-Timing`` header: milliseconds since ``started`` (``perf_counter``)."""
    return {"Server-Timing": _duration(started)}


def _duration(started: float) -> str:
    """The ``Server-Timing`` value: ``app;dur=<ms since started, 3 decimals>``."""
    return f"app;dur={(time.perf_counter() - started) * 1000:.3f}"


async def scored(
    scorer: Any, body: bytes | bytearray, work: Callable[..., Result], *args: Any
) -> Result:
    """``work(*args)``: on the event loop for a small body the ONNX graph scores (see
    :data:`INLINE_BODY_BYTES`), else on a worker thread."""
    if len(body) <= INLINE_BODY_BYTES and getattr(scorer, "kind", "") == "onnx":
        return work(*args)
    return await run_in_threadpool(work, *args)


class Answer(Response):
    """A ``200`` JSON answer of a scoring route: ``body``, then ``headers`` (the timing
    header first), ``content-length`` and ``content-type``, in the order starlette's
    :class:`~starlette.responses.Response` sends them, without its per-answer work
    (rendering, lower-casing and encoding header names, looking for the two it adds)."""

    media_type = "application/json"

    def __init__(self, body: bytes, started: float, *headers: tuple[bytes, bytes]) -> None:
        self.status_code = 200
        self.body = body
        self.background = None
        self.raw_headers = [
            (b"server-timing", _duration(started).encode("latin-1")),
            *headers,
            (b"content-length", b"%d" % len(body)),
            (b"content-type", b"application/json"),
        ]


def refusal(status: int, content: dict[str, Any], started: float | None = None) -> JSONResponse:
    """A refusal's answer: ``content`` as JSON, timed since ``started`` when given."""
    return JSONResponse(
        content, status_code=status, headers=timing(started) if started is not None else None
    )


def direct(endpoint: Callable[[Request], Awaitable[Response]], *, debug: bool = False) -> ASGIApp:
    """``endpoint`` (a FastAPI route's function, which takes the raw request) as an ASGI app.

    The scoring routes need nothing FastAPI adds to a request (parameters, dependencies,
    response models: they read their own bodies and render their own answers), and its
    routing and middleware cost more than scoring one customer. An exception is answered
    as FastAPI's outermost middleware answers it (500, ``Internal Server Error``) and
    raised again for the server to log.
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = await endpoint(Request(scope, receive, send))
        await response(scope, receive, send)

    return ServerErrorMiddleware(app, debug=debug)

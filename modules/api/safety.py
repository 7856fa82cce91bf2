"""What the API does with hostile input: names that try to leave their library, and bodies too big or too deep.

Names. A name taken from a request (checkpoint, VAE, LoRA, hypernetwork, embedding, style) is only ever looked
up in its library's listing, never joined to a path. On top of that:

* a name shaped like a path escape — a NUL byte, an absolute path or drive, a ``..`` segment, also after
  URL-decoding (``..%2F``) — is refused with 422 before any lookup (:func:`check_name`);
* a listed file that is a link leading out of both the data dir and its library folder is refused with 403
  (:func:`check_inside`): A1111 follows such links, we do not let a request reach them. A library folder set
  by a flag (``--lora-dir /mnt/loras``) counts as inside, as does ``--ckpt``/``--vae-path``.

Bodies (:class:`RequestGuard`, plain ASGI so it sees every request, the Gradio UI's too):

* more than :data:`MAX_BODY_BYTES` → 413, checked on ``Content-Length`` before reading and on the bytes that
  actually arrive (chunked uploads have no length);
* a JSON body to ``/sdapi/`` or ``/internal/`` nested deeper than :data:`MAX_JSON_DEPTH` → 400 (Python's JSON
  parser and the error echo recurse; A1111's real requests are 3–6 levels deep);
* answers are A1111's error JSON.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import unquote

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 50 * 1024 * 1024
MAX_JSON_DEPTH = 64
JSON_PATHS = ("/sdapi/", "/internal/")


class NameRefusedError(ValueError):
    """A request's name is shaped like a path escape (answered 422)."""


class NotFoundError(LookupError):
    """A request names something its library does not have (answered 404)."""


class OutsideLibraryError(PermissionError):
    """A request's name leads to a file outside its library and the data dir (answered 403)."""


def check_name(field: str, value: object) -> str:
    """``value`` if it is a plain name for ``field``; raises :class:`NameRefusedError` naming the problem."""
    if not isinstance(value, str):
        raise NameRefusedError(f"{field} must be text; got {type(value).__name__}")
    seen, text = {value}, value
    for _ in range(3):  # %252e%252e → %2e%2e → ..
        text = unquote(text)
        seen.add(text)
    for text in seen:
        if "\x00" in text:
            raise NameRefusedError(f"{field} {value!r} contains a NUL byte; give the name as listed")
        if PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() or PureWindowsPath(text).drive \
                or text.startswith(("/", "\\")):
            raise NameRefusedError(f"{field} {value!r} is an absolute path; give the name as listed, not a path")
        if ".." in re.split(r"[\\/]", text):
            raise NameRefusedError(f"{field} {value!r} contains '..'; names cannot leave their folder")
    return value


def check_inside(field: str, name: str, path: Path, roots: Iterable[Path], allowed: Iterable[Path] = ()) -> None:
    """Refuse (403) a listed file whose real location is outside every root (and is not one of ``allowed``)."""
    real = path.resolve()
    if any(real == Path(a).resolve() for a in allowed):
        return
    for root in roots:
        root = Path(root).resolve()
        if real == root or root in real.parents:
            return
    raise OutsideLibraryError(f"{field} {name!r} is a link to a file outside the data dir ({real}); move the file "
                              "into the library folder or point the library's --*-dir flag at its folder")


# --------------------------------------------------------------------------------------------------- the guard
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_PAIR = re.compile(rb"\[\]|\{\}")
_NOT_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))


def json_too_deep(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON ``body`` nests arrays/objects deeper than ``limit`` (C-speed passes; malformed → False)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKET)
    for _ in range(limit):
        reduced = _PAIR.sub(b"", brackets)
        if not reduced or reduced == brackets:
            return False  # balanced within the limit, or unbalanced: the JSON parser will say what is wrong
        brackets = reduced
    return True


def _error_body(status: int, error: str, detail: str) -> bytes:
    return json.dumps({"error": error, "detail": detail, "body": "", "errors": detail}).encode()


class _TooLarge(Exception):
    pass


class RequestGuard:
    """ASGI middleware: body size and JSON depth limits, and ``--api-log`` lines."""

    def __init__(self, app, max_body: int = MAX_BODY_BYTES, max_depth: int = MAX_JSON_DEPTH,
                 log_requests: bool = False) -> None:
        self.app = app
        self.max_body = max_body
        self.max_depth = max_depth
        self.log_requests = log_requests

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 0}

        async def send_logged(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, send_logged)
        finally:
            if self.log_requests and scope["path"].startswith(JSON_PATHS):
                client = scope.get("client") or ("-", 0)
                logger.info("API %s %s %s %s %.3fs", status["code"], client[0], scope["method"], scope["path"],
                            time.perf_counter() - started)

    async def _guarded(self, scope, receive, send) -> None:
        headers = dict(scope.get("headers") or ())
        length = headers.get(b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                await self._refuse(send, 400, "Content-Length is not a number")
                return
            if int(length) > self.max_body:
                await self._refuse(send, 413, f"request body is larger than {self.max_body} bytes")
                return
        if scope["method"] in ("POST", "PUT", "PATCH") and scope["path"].startswith(JSON_PATHS):
            await self._buffered(scope, receive, send, headers)
            return
        seen = {"bytes": 0, "started": False}

        async def counting_receive():
            message = await receive()
            if message["type"] == "http.request":
                seen["bytes"] += len(message.get("body", b""))
                if seen["bytes"] > self.max_body:
                    raise _TooLarge
            return message

        async def tracking_send(message) -> None:
            if message["type"] == "http.response.start":
                seen["started"] = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not seen["started"]:
                await self._refuse(send, 413, f"request body is larger than {self.max_body} bytes")

    async def _buffered(self, scope, receive, send, headers) -> None:
        """Read the whole body (bounded), check its JSON depth, then hand it to the app in one piece."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await self._refuse(send, 413, f"request body is larger than {self.max_body} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if b"json" in headers.get(b"content-type", b"application/json").lower() and json_too_deep(body, self.max_depth):
            await self._refuse(send, 400, f"JSON body is nested deeper than {self.max_depth} levels")
            return
        delivered = {"done": False}

        async def replay():
            if not delivered["done"]:
                delivered["done"] = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send, status: int, detail: str) -> None:
        body = _error_body(status, "HTTPException", detail)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

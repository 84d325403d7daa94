"""The HTTP guards in front of the chat API: body size, API key, and what a health check or a 500 may show.

API key rules (``api_key_digest``, ``check_exposure``): the key comes from ``--api-key`` or
``$PREFLOOP_API_KEY``; a key that is set but empty is an error (never an open API), and serving on an address
other than loopback without a key refuses unless told ``--insecure``.

Pure (no ray, no starlette): ``actors/serve.py`` calls these before a request reaches the engine. The server
keeps only the SHA-256 of its API key (``key_digest``), compared in constant time. Paths and exception texts
never leave the server: ``/health`` names models by id, and a 500 carries only an error id that the server
log has next to the traceback.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from typing import Any

from prefloop.core.openai_api import RequestError
from prefloop.core.openai_responses import served_model_id

log = logging.getLogger(__name__)
API_KEY_ENV = "PREFLOOP_API_KEY"


class ServeConfigError(ValueError):
    """A serving setup that would expose the model by mistake (an empty key, an open non-loopback bind)."""


class TooLarge(RequestError):
    """A request body over the server's size limit (HTTP 413)."""

    status = 413


class Unauthorized(RequestError):
    """A missing or wrong API key (HTTP 401)."""

    status = 401
    kind = "authentication_error"


def check_body_size(declared: str | None, limit: int) -> None:
    """Refuse before reading a body whose Content-Length is over ``limit`` bytes (413)."""
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError(None, f"bad Content-Length {declared!r}") from None
        if size > limit:
            raise TooLarge(None, f"request body is {size} bytes; this server takes at most {limit}")


def key_digest(key: str) -> str:
    """What the server keeps of an API key (its SHA-256), never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_digest(api_key: str | None) -> str | None:
    """The SHA-256 of the API key (``api_key``, else ``$PREFLOOP_API_KEY``); None: no key required. A key that
    is given but empty (say a Secret that resolved to nothing) is an error, not an open API."""
    where = "--api-key" if api_key is not None else f"${API_KEY_ENV}"
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    if key is None:
        return None
    if not key.strip():
        raise ServeConfigError(f"{where} is set but empty: give a key, or unset it to serve without one")
    return key_digest(key.strip())


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def check_exposure(host: str, digest: str | None, insecure: bool) -> None:
    """Refuse to serve without an API key on an address other than loopback, unless told ``insecure``."""
    if digest is None and host not in LOOPBACK and not host.startswith("127."):
        if not insecure:
            raise ServeConfigError(f"refusing to serve on {host} without an API key: anyone who reaches it could use the "
                             f"model. Set ${API_KEY_ENV} (or --api-key), bind 127.0.0.1, or pass --insecure.")
        log.warning("serving on %s WITHOUT an API key (--insecure): anyone who reaches it can use the model", host)


def check_api_key(authorization: str | None, digest: str | None) -> None:
    """OpenAI's ``Authorization: Bearer <key>``; no-op when the server has no key (``digest`` None)."""
    if digest is None:
        return
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(None, "missing API key: send 'Authorization: Bearer <key>'")
    if not hmac.compare_digest(key_digest(token.strip()), digest):
        raise Unauthorized(None, "invalid API key")


def public_health(name: str, state: dict[str, Any]) -> dict[str, Any]:
    """``/health``: a replica's state with model ids instead of paths."""
    swaps = [{k: v for k, v in s.items() if k != "model_dir"} for s in state.get("swaps", [])]
    return {"status": "ok", "replica": state["replica"], "round": state["round"], "step": state.get("step"),
            "model": served_model_id(name, state["round"], state.get("step")), "swaps": swaps}


def server_error(error_id: str) -> dict[str, Any]:
    """A 500's body: no exception text (it may hold paths or data), an id to find the traceback in the log."""
    return {"error": {"message": f"internal server error (error id {error_id}; the server log has the details)",
                      "type": "server_error", "param": None, "code": None, "error_id": error_id}}

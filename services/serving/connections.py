"""uvicorn HTTP protocols with a request-head timeout and a hard cap on open connections.

What uvicorn 0.54 does on its own, and what it leaves open:

- ``timeout_keep_alive`` closes a connection that stays idle after a response. It is armed only
  after a first response and cancelled by any byte received, so a new connection that sends
  nothing, or a client that sends its headers one byte at a time (slowloris), is never closed.
- ``limit_concurrency`` answers a request with 503 (``text/plain``, ``Connection: close``) when
  at least that many connections are open or requests are running, the asking connection
  included. It decides when a request head arrives; the connections themselves are accepted
  and kept.

The protocols here subclass uvicorn's own two HTTP/1.1 protocols (``H11Protocol`` and
``HttpToolsProtocol``; the mixin uses only what both have in common) and add:

- **a header timer**: armed when a connection opens and again when a response completes,
  cancelled once a request head is complete. When it fires while no request is in progress, the
  connection is closed without an answer. A request whose head arrived in time is never cut off
  by it (slow bodies and long decodes are the app's business).
- **a cap**: a connection accepted while ``limit_concurrency`` connections are already open is
  closed at once, so open connections (and file descriptors) stay bounded. Connections waiting
  to be accepted sit in the kernel's listen backlog.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("uvicorn.error")

HttpImplementation = Literal["auto", "h11", "httptools"]


class HeaderTimeoutMixin:
    """Put before a uvicorn HTTP protocol class in the bases; see the module docstring."""

    header_timeout_s: float = 10.0  # set per server by ``protocol_class``
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # registers the connection in server_state.connections
        cap = self.config.limit_concurrency
        if cap is not None and len(self.connections) > cap:
            logger.warning("Closed a new connection: %d open, max_connections is %d.", len(self.connections) - 1, cap)
            transport.close()
            return
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._request_in_progress():  # this data completed a request head: a cycle started
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request already received
        if not self.transport.is_closing() and not self._request_in_progress():
            self._arm_header_timer()  # the next request head is due within the timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _request_in_progress(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timer_expired)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timer_expired(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing() and not self._request_in_progress():
            logger.debug("Closed a connection that sent no complete request head in %s s.", self.header_timeout_s)
            self.transport.close()


class H11HeaderTimeoutProtocol(HeaderTimeoutMixin, H11Protocol):
    """uvicorn's h11 protocol with the header timeout and the connection cap."""


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional for uvicorn (installed with uvicorn[standard])
    HttpToolsHeaderTimeoutProtocol: type[asyncio.Protocol] | None = None
else:

    class HttpToolsHeaderTimeoutProtocol(HeaderTimeoutMixin, HttpToolsProtocol):
        """uvicorn's httptools protocol with the header timeout and the connection cap."""


def protocol_class(http: HttpImplementation, header_timeout_s: float) -> type[asyncio.Protocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)``; ``auto`` prefers httptools like uvicorn."""
    if http == "httptools" and HttpToolsHeaderTimeoutProtocol is None:
        raise RuntimeError("http=httptools needs the httptools package (pip install 'uvicorn[standard]')")
    use_httptools = http != "h11" and HttpToolsHeaderTimeoutProtocol is not None
    base = HttpToolsHeaderTimeoutProtocol if use_httptools else H11HeaderTimeoutProtocol
    return type(base.__name__, (base,), {"header_timeout_s": header_timeout_s})

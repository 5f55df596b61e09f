"""Shutdown on SIGTERM without losing accepted work, shared by both services.

uvicorn's own SIGTERM handling closes the listening socket at once (new
requests see "connection refused") and cancels requests still running when
``--timeout-graceful-shutdown`` passes (they get a bare 500). So the services
take SIGTERM first: the service turns not-ready and answers new requests 503 +
Retry-After while the listener stays open, drains its own work within its own
drain timeout (answering whatever is left with a typed 503), and only then hands
the signal to uvicorn, which by then has nothing left to cut. A second SIGTERM
(or Ctrl-C) goes to uvicorn straight away.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("textsketch.lifecycle")


def install_sigterm_drain(begin_drain: Callable[[], None], drain: Callable[[], Awaitable[Any]]):
    """Handle SIGTERM as described above; returns a function that restores the previous handler.

    Call from the app's lifespan (after uvicorn installed its handlers), on the event loop. Returns
    None when not on the main thread (no signal handlers there: tests driving the app in-process).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)
    draining: dict[str, asyncio.Task | None] = {"task": None}

    def forward(signum: int) -> None:
        if callable(previous):
            previous(signum, None)

    async def drain_then_forward(signum: int) -> None:
        try:
            await drain()
        except Exception:  # noqa: BLE001 - never keep the process alive because the drain failed
            log.exception("drain failed; shutting down anyway")
        finally:
            forward(signum)

    def start(signum: int) -> None:
        if draining["task"] is None:
            draining["task"] = loop.create_task(drain_then_forward(signum), name="sigterm-drain")

    def on_sigterm(signum, frame) -> None:
        if draining["task"] is not None:  # a second SIGTERM: stop waiting
            forward(signum)
            return
        begin_drain()
        loop.call_soon_threadsafe(start, signum)

    signal.signal(signal.SIGTERM, on_sigterm)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, previous)

    return restore

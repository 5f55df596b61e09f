"""The one way a service is started: uvicorn run from Python, with computed timeouts and connection limits.

    python -m decoder_service [--host 0.0.0.0] [--port 8002]
    python -m encoder_service [--host 0.0.0.0] [--port 8001]

Scripts, images, compose and the test helpers all use these commands. ``serve`` runs
``uvicorn.Server`` on a ``uvicorn.Config`` built by ``build_config``:

- uvicorn's graceful-shutdown timeout is the service's own drain timeout plus
  ``graceful_margin_s``, so the service's drain, not uvicorn, decides when accepted work is
  given up (uvicorn cancels the requests still running when its timeout passes);
- connections get a request-head timeout and a cap (``services.serving.connections``), plus
  uvicorn's keep-alive timeout and listen backlog, from ``ServerSettings``
  (``TEXTSKETCH_SERVER_*``), read when the server is built.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence

import uvicorn
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.serving.connections import HttpImplementation, protocol_class

STARTUP_FAILURE = 3  # uvicorn's exit status when the server could not start
logger = logging.getLogger("uvicorn.error")


class ServerSettings(BaseSettings):
    """Connection handling and shutdown of either service (``TEXTSKETCH_SERVER_*``)."""

    model_config = SettingsConfigDict(env_prefix="TEXTSKETCH_SERVER_", extra="ignore")

    header_timeout_s: float = Field(10.0, gt=0, description="A connection must send a complete request head within this many seconds of opening or of its previous response, else it is closed (idle and slowloris connections).")
    keep_alive_s: float = Field(5.0, gt=0, description="An idle keep-alive connection is closed this many seconds after its last response (uvicorn's timeout_keep_alive).")
    max_connections: int = Field(1024, ge=2, description="Cap on open connections: with this many open, a request gets uvicorn's 503 (`Connection: close`); a connection beyond it is closed at once, unanswered.")
    backlog: int = Field(2048, ge=1, description="Listen backlog: connections the kernel holds until they are accepted (capped by net.core.somaxconn).")
    graceful_margin_s: float = Field(15.0, gt=0, description="uvicorn's graceful-shutdown timeout is the service's drain timeout plus this, so the service's drain decides.")
    http: HttpImplementation = Field("auto", description="HTTP/1.1 implementation: auto (httptools when installed), h11 or httptools.")


def graceful_timeout_s(drain_timeout_s: float, settings: ServerSettings) -> int:
    """uvicorn's graceful-shutdown timeout: above the service's drain timeout by construction."""
    return math.ceil(drain_timeout_s + settings.graceful_margin_s)


def build_config(app: str, *, host: str, port: int, drain_timeout_s: float, settings: ServerSettings,
                 log_level: str = "info") -> uvicorn.Config:
    """The uvicorn configuration of a service: ``app`` is an app factory (``module:function``)."""
    return uvicorn.Config(
        app,
        factory=True,
        host=host,
        port=port,
        log_level=log_level,
        http=protocol_class(settings.http, settings.header_timeout_s),
        ws="none",  # no WebSocket routes: an upgrade request is served as plain HTTP
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.max_connections,
        backlog=settings.backlog,
        timeout_graceful_shutdown=graceful_timeout_s(drain_timeout_s, settings),
    )


def serve(app: str, *, default_port: int, drain_timeout_s: float, argv: Sequence[str] | None = None) -> None:
    """Parse ``--host``, ``--port``, ``--log-level`` (and ``--app`` for tests) and run the service until it stops."""
    parser = argparse.ArgumentParser(prog=f"python -m {app.split('.')[0]}",
                                     description=f"Serve {app} under uvicorn (settings from TEXTSKETCH_* env).")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (containers: 0.0.0.0)")
    parser.add_argument("--port", type=int, default=default_port)
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug", "trace"])
    parser.add_argument("--app", default=app, help="another app factory served with this service's settings "
                                                    "(tests serve the decoder over a fake model)")
    args = parser.parse_args(argv)
    settings = ServerSettings()
    config = build_config(args.app, host=args.host, port=args.port, drain_timeout_s=drain_timeout_s,
                          settings=settings, log_level=args.log_level)
    logger.info("Graceful-shutdown timeout %d s (drain %g s + margin); header timeout %g s; max %d connections.",
                config.timeout_graceful_shutdown, drain_timeout_s, settings.header_timeout_s, settings.max_connections)
    server = uvicorn.Server(config)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:
        sys.exit(STARTUP_FAILURE)

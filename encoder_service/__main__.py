"""``python -m encoder_service``: the encoder under uvicorn (``services/serving/server.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from encoder_service.settings import EncoderSettings
from services.serving.server import serve

DEFAULT_DRAIN_TIMEOUT_S = 30.0  # until EncoderSettings has its own drain_timeout_s


def drain_timeout_s() -> float:
    return getattr(EncoderSettings(), "drain_timeout_s", DEFAULT_DRAIN_TIMEOUT_S)


def main(argv: Sequence[str] | None = None) -> None:
    serve("encoder_service.app:create_app", default_port=8001, drain_timeout_s=drain_timeout_s(), argv=argv)


if __name__ == "__main__":
    main()

"""``python -m decoder_service``: the decoder under uvicorn (``services/serving/server.py``)."""

from __future__ import annotations

from collections.abc import Sequence

from decoder_service.settings import DecoderSettings
from services.serving.server import serve


def main(argv: Sequence[str] | None = None) -> None:
    serve("decoder_service.app:create_app", default_port=8002, drain_timeout_s=DecoderSettings().drain_timeout_s,
          argv=argv)


if __name__ == "__main__":
    main()

"""What both services share apart from the codec.

- ``errors``: transport-free service errors (overload, readiness, deadlines, upstream);
- ``http``: the one mapping of every error to a status code, bearer auth, body reading;
- ``metrics``: the Prometheus metric set;
- ``client``: Python clients of the two services;
- ``server``: the launcher (``python -m decoder_service`` / ``encoder_service``) running uvicorn;
- ``connections``: uvicorn HTTP protocols with a request-head timeout and a connection cap.

Codec stages never import this package (checked by ``make lint``).
"""

"""What both services share apart from the codec.

- ``errors``: transport-free service errors (overload, readiness, deadlines, upstream);
- ``http``: the one mapping of every error to a status code, bearer auth, body reading;
- ``metrics``: the Prometheus metric set;
- ``client``: Python clients of the two services.

Codec stages never import this package (checked by ``make lint``).
"""

"""The Serve applications: ``ray_service.app:build_decoder`` and ``ray_service.app:build_encoder``.

Two applications in one Serve config (deploy/ray/): Ray Serve allows one ``serve.ingress`` deployment
per application, and both apps are reused whole:

- ``decoder`` (route ``/decoder``): the decoder app on every replica (one per GPU), the same REST contract
  as the plain decoder (``/decoder/decode``, ``/decoder/candidates``, health, metrics);
- ``textsketch`` (route ``/``): the encoder app, the one origin clients and the page talk to
  (``/encode``, ``/decode``, ``/candidates``, the page); it reaches the decoder application through a
  deployment handle, with each payload's bucket for the bucket-affine router.

Replica counts, GPUs, autoscaling and runtime environment come from the config's ``deployments``
section; the builders' ``args`` pick the router and the app factories, and ``build_decoder`` sets what
must follow from the decoder's own settings:

- ``max_ongoing_requests`` = its scheduler's capacity + headroom (``decoder_max_ongoing``), so
  back-pressure is the scheduler's typed 429/503 with ``Retry-After``, not a Ray queue;
- ``max_queued_requests``: a bound on what may wait in callers for a replica slot, reached only while
  replicas start or restart (the encoder then answers 503 with ``Retry-After``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.config import RequestRouterConfig

from ray_service.deployments import DECODER_APP, ENCODER_APP, Decoder, Encoder, decoder_max_ongoing

ROUTERS = {
    "bucket_affinity": "ray_service.router:BucketAffinityRouter",
    "power_of_two": "ray.serve._private.request_router:PowerOfTwoChoicesRequestRouter",  # Ray's default
}


class DecoderArgs(BaseModel):
    """``args`` of ``ray_service.app:build_decoder`` in a Serve config."""

    model_config = ConfigDict(extra="forbid")

    router: Literal["bucket_affinity", "power_of_two"] = Field(
        "bucket_affinity", description="Request router: bucket_affinity (ours) or power_of_two (Ray's default).")
    imbalance_threshold: int = Field(
        4, ge=0, description="Bucket affinity yields when the affine replica has this many more ongoing requests "
        "than the least-loaded one.")
    routing_stats_period_s: float = Field(0.5, gt=0, description="How often Ray polls each replica's queued buckets.")
    decoder_app: str = Field(DECODER_APP, description="Factory of the decoder app: (settings) -> FastAPI.")
    max_queued_requests: int = Field(
        64, ge=1, description="Requests that may wait in callers for a decoder slot before they fail (503).")


class EncoderArgs(BaseModel):
    """``args`` of ``ray_service.app:build_encoder`` in a Serve config."""

    model_config = ConfigDict(extra="forbid")

    decoder_application: str = Field("decoder", description="Name of the decoder application in the same config.")
    encoder_app: str = Field(ENCODER_APP, description="Factory of the encoder app: (settings, http_transport) -> FastAPI.")


def build_decoder(args: dict | None = None):
    """The decoder application (``serve run`` / ``serve deploy`` / ``serve.run``); ``args`` as in ``DecoderArgs``."""
    from decoder_service.settings import DecoderSettings

    options = DecoderArgs.model_validate(args or {})
    router = RequestRouterConfig(
        request_router_class=ROUTERS[options.router],
        request_router_kwargs={"imbalance_threshold": options.imbalance_threshold}
        if options.router == "bucket_affinity" else {},
        request_routing_stats_period_s=options.routing_stats_period_s,
    )
    return serve.deployment(Decoder).options(
        name="Decoder",
        max_ongoing_requests=decoder_max_ongoing(DecoderSettings()),
        max_queued_requests=options.max_queued_requests,
        request_router_config=router,
    ).bind(options.decoder_app)


def build_encoder(args: dict | None = None):
    """The encoder application; ``args`` as in ``EncoderArgs``."""
    options = EncoderArgs.model_validate(args or {})
    return serve.deployment(Encoder).options(name="Encoder").bind(options.decoder_application, options.encoder_app)

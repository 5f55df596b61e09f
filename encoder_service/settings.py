"""Encoder service settings (``TEXTSKETCH_ENCODER_*``), read when built, never at import."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.devices import cpu_budget
from services.settings import CodecSettings

# Default cores per running encode: HED's convolutions and the caption model scale to about 4 threads;
# the sketch coder is single-threaded Python, so more encodes than cores/4 mostly wait for one another.
CORES_PER_ENCODE = 4


class EncoderSettings(BaseSettings):
    """Serving knobs of the encoder; the codec (profile, prompt, sketch) is ``codec`` (``TEXTSKETCH_*``)."""

    model_config = SettingsConfigDict(env_prefix="TEXTSKETCH_ENCODER_", extra="ignore")

    max_upload_bytes: int | None = Field(None, ge=1, description="Largest image upload in bytes; default: the codec's max_upload_bytes (32 MiB).")
    max_image_pixels: int | None = Field(None, ge=1, description="Largest decoded image in pixels; default: the codec's max_image_pixels (40 Mpx).")
    max_concurrent_encodes: int | None = Field(
        None, ge=1, description="Encodes running at once in the thread pool (CPU-bound). Unset: one per "
        f"{CORES_PER_ENCODE} available cores (at least 1).")
    torch_threads: int | None = Field(
        None, ge=1, description="torch threads each running encode uses (set process-wide at start-up). Unset: the "
        "available cores (OMP_NUM_THREADS when set, as under Ray; else the affinity mask and cgroup quota) divided "
        "by max_concurrent_encodes, at least 1.")
    max_waiting_encodes: int = Field(16, ge=0, description="Encodes waiting for a slot before 429.")
    retry_after_s: float = Field(2.0, gt=0, description="Retry-After sent with 429.")
    decoder_url: str | None = Field(None, description="Decoder service base URL for candidate selection (e.g. http://decoder:8002).")
    decoder_token: SecretStr | None = Field(None, description="Bearer token sent to the decoder, if it requires one.")
    decoder_timeout_s: float = Field(300.0, gt=0, description="Timeout of one /candidates call to the decoder.")
    candidate_fallback: bool = Field(False, description="Default of ?candidate_fallback: encode without selection when the decoder is unreachable or the selection CLIP cannot be loaded.")
    max_candidates: int = Field(8, ge=1, le=64, description="Largest ?candidates=N accepted (a power of two).")
    selection_clip_model: str | None = Field(None, description="transformers CLIPModel (hub id, folder, or tiny) scoring candidates; default: the codec's clip_model.")
    selection_clip_revision: str | None = Field(None, description="Hub revision (commit) of the selection CLIP model; None = the default branch.")
    warmup: bool = Field(True, description="After start-up, load the models the configured prompt source and sketch need (a warm-up encode of a small synthetic image) in the background; /health/ready and /encode answer 503 until done. Off: ready at once, models load on first use.")
    drain_timeout_s: float = Field(30.0, gt=0, description="On SIGTERM, how long the encodes in flight may take to finish (new requests get 503 draining meanwhile, the listener stays open); then uvicorn stops.")
    handle_sigterm: bool = Field(True, description="Drain on SIGTERM as above before uvicorn stops (off: uvicorn's own shutdown).")
    auth_token: SecretStr | None = Field(None, description="When set, /encode needs `Authorization: Bearer <token>`.")
    codec: CodecSettings = Field(default_factory=CodecSettings, description="Codec settings (TEXTSKETCH_* env).")

    def encode_concurrency(self, cpus: int | None = None) -> tuple[int, int]:
        """(encodes at once, torch threads per encode) on ``cpus`` cores (default: ``cpu_budget()``)."""
        cpus = cpus or cpu_budget()
        concurrent = self.max_concurrent_encodes or max(1, cpus // CORES_PER_ENCODE)
        return concurrent, self.torch_threads or max(1, cpus // concurrent)

    def upload_limits(self) -> tuple[int, int]:
        return (self.max_upload_bytes or self.codec.max_upload_bytes, self.max_image_pixels or self.codec.max_image_pixels)

    def clip_model(self) -> str:
        return self.selection_clip_model or self.codec.clip_model

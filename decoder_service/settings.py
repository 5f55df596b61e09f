"""Decoder service settings (``TEXTSKETCH_DECODER_*``), read when built, never at import."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.settings import CodecSettings


class DecoderSettings(BaseSettings):
    """Serving knobs of the decoder; the codec (profile, cache dir, device) is ``codec`` (``TEXTSKETCH_*``)."""

    model_config = SettingsConfigDict(env_prefix="TEXTSKETCH_DECODER_", extra="ignore")

    max_batch_size: int = Field(8, ge=1, le=64, description="Largest batch run on the model (1 turns batching off).")
    max_queue_delay_ms: float = Field(10.0, ge=0, description="How long a bucket's oldest request may wait for company.")
    max_queue_size: int = Field(64, ge=1, description="Queued jobs (not counting the running batch) before 429.")
    retry_after_s: float = Field(1.0, gt=0, description="Retry-After sent with 429 before any throughput was measured (afterwards it is computed).")
    max_queue_cost: float | None = Field(
        None, gt=0, description="Queued work in cost units (megapixels: working px x steps x (1 + ControlNet) + output px) "
        "before 429. Default: max_queue_size jobs of a 768x512 PICS image under the profile.")
    max_request_cost: float | None = Field(
        None, gt=0, description="Largest cost one request (a decode, or all its candidates) may have; above: 413. "
        "Default: max_queue_cost.")
    admission_headroom: float = Field(
        0.9, gt=0, le=1, description="Admit a request only when the estimated wait before it starts is below this "
        "share of its deadline; otherwise 429 with a computed Retry-After.")
    max_retry_after_s: float = Field(60.0, ge=1, description="Upper bound of a computed Retry-After.")
    request_timeout_s: float = Field(60.0, gt=0, description="Deadline of a request in the queue; past it: 504.")
    postprocess_workers: int = Field(2, ge=1, le=64, description="Threads that resize and encode decoded images (off the model thread).")
    liveness_stall_s: float = Field(
        300.0, gt=0, description="/health/live fails when a running batch shows no progress (no diffusion step) for this long.")
    stop_grace_s: float = Field(
        30.0, gt=0, description="After the drain timeout, how long the running batch gets to stop at its next step.")
    max_candidates: int = Field(8, ge=1, le=64, description="Largest N accepted by /candidates (a power of two).")
    warmup_batch_sizes: list[int] | None = Field(
        None, description="Batch sizes to warm up; default every size 1..max_batch_size plus powers of two up to max_candidates.")
    max_body_bytes: int = Field(80 * 1024, ge=1, description="Largest accepted request body (payloads are < 67 KiB).")
    drain_timeout_s: float = Field(
        120.0, gt=0, description="On SIGTERM, how long accepted requests get to finish (new ones get 503 meanwhile); "
        "past it, what is left gets 503 and the process exits.")
    disconnect_poll_s: float = Field(0.05, gt=0, description="How often a waiting request checks its client is still there.")
    auth_token: SecretStr | None = Field(None, description="When set, /decode and /candidates need `Authorization: Bearer <token>` (health and metrics stay open).")
    output_quality: int = Field(95, ge=1, le=100, description="WebP/JPEG quality of decoded images.")
    load_in_background: bool = Field(True, description="Serve /health (503 not ready) while models load.")
    handle_sigterm: bool = Field(True, description="Turn not-ready (503) the moment SIGTERM arrives, before uvicorn drains.")
    codec: CodecSettings = Field(default_factory=CodecSettings, description="Codec settings (TEXTSKETCH_* env).")

    @field_validator("warmup_batch_sizes")
    @classmethod
    def _positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(size < 1 for size in value):
            raise ValueError("warm-up batch sizes must be positive")
        return value

    def batch_sizes_to_warm(self) -> list[int]:
        if self.warmup_batch_sizes is not None:
            return sorted(set(self.warmup_batch_sizes))
        sizes = set(range(1, self.max_batch_size + 1))
        n = 1
        while n <= self.max_candidates:
            sizes.add(n)
            n *= 2
        return sorted(sizes)

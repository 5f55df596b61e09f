"""Tiny randomly initialised CLIP and BLIP models for the prompt-stage tests (see services.tiny_encoders)."""

from services.tiny_encoders import TINY_WORDS, build_tiny_blip, build_tiny_clip

__all__ = ["TINY_WORDS", "build_tiny_blip", "build_tiny_clip"]

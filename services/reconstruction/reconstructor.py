"""Reconstruction stage: token ids + control image -> pixels, with Stable Diffusion (+ ControlNet).

A ``Reconstructor`` serves one model profile. It wraps diffusers'
``StableDiffusionControlNetPipeline`` (PICS, UniPC) and ``StableDiffusionPipeline``
(PIC, DPM-Solver multistep), which share one set of weights loaded once with
``from_pretrained`` (fp16 on CUDA, fp32 on CPU; diffusers' default attention
processor is PyTorch SDPA). ``decode_batch`` runs a list of compatible jobs in
one pipeline call, in numbered stages:

1. check inputs: one bucket, ids in the vocabulary, control image present for
   PICS and at the working size;
2. prompt embeddings from the exact transmitted ids: ``[BOS] + ids + suffix +
   [EOS]`` padded with the tokenizer's pad id to 77, through the text encoder's
   last hidden state (what the pipeline's ``encode_prompt`` does with
   ``clip_skip=None``). Only the suffix is cut if the ids leave no room. Each
   job is encoded on its own, so a batch cannot change its embedding;
3. control images (PICS);
4. one CPU ``torch.Generator`` per job, seeded from ``job.seed``: latents are
   drawn on the CPU, so every device starts from the same noise;
5. the pipeline call, split in halves on CUDA out-of-memory (never losing a
   job), or in padded batches of ``settings.deterministic_batch_size`` with
   ``settings.deterministic`` (bit-identical to decoding alone);
6. postprocess: 8-bit RGB at the working size, resized to the original size
   (``resize=False`` leaves the resize to the caller: the decoder service does it
   in a separate pool so the model thread only runs pipelines).

``should_stop`` (optional) is called after every diffusion step; when it returns
True the batch ends with ``DecodeInterruptedError`` (the decoder service stops
work whose clients have all gone, and uses the calls as its worker heartbeat).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
from PIL import Image

from services.bitstream.container import Mode
from services.devices import is_cuda, resolve_device
from services.errors import DecodeInterruptedError
from services.imaging import resize
from services.profiles import ModelProfile
from services.reconstruction.jobs import DecodeJob, run_splitting_on_oom
from services.reconstruction.pipelines import assemble_pipelines, context_length, load_pipelines
from services.settings import CodecSettings


class Reconstructor:
    """Warm SD (+ ControlNet) pipelines for one profile; decodes batches of ``DecodeJob``."""

    def __init__(self, profile: ModelProfile, settings: CodecSettings) -> None:
        self.profile = profile
        self.settings = settings
        self.device = resolve_device(settings.device)
        self._pipelines: dict[Mode, object] = {}
        self._negative_embeds = None
        self._suffix_ids: list[int] | None = None
        self._lock = threading.Lock()  # diffusers schedulers are stateful: one call at a time
        self._should_stop: Callable[[], bool] | None = None
        self.on_oom_split: Callable[[], None] | None = None  # the decoder service counts splits
        on_cuda = is_cuda(self.device)
        # CPU: bit-identical batch-vs-alone by default; CUDA: real batches unless asked.
        self.deterministic = (not on_cuda) if settings.deterministic is None else settings.deterministic
        self.deterministic_batch_size = settings.deterministic_batch_size or (4 if on_cuda else 1)

    # -- loading ---------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return bool(self._pipelines)

    def load(self) -> None:
        """Load the pipelines once (idempotent). Tiny profiles are built and saved first."""
        with self._lock:
            if self._pipelines:
                return
            base_model, controlnet = self.profile.base_model, self.profile.controlnet
            if self.profile.tiny:
                from services.prompt.tokenizer import load_tokenizer
                from services.tiny.diffusion import ensure_tiny_models

                paths = ensure_tiny_models(self.settings, load_tokenizer(self.settings))
                base_model, controlnet = str(paths.base_model), str(paths.controlnet) if controlnet else None
            self._pipelines = load_pipelines(self.profile, base_model, controlnet, self.device, self.deterministic,
                                             self.settings)
            self._negative_embeds = self._encode_negative_prompt()

    def load_components(self, components: dict) -> None:
        """Serve in-memory components (unet, vae, text_encoder, tokenizer, scheduler, controlnet).

        For benchmarks that build a full-size architecture with random weights;
        ``load`` is the way to serve real checkpoints.
        """
        with self._lock:
            self._pipelines = assemble_pipelines(self.profile, self.device, self.deterministic, **components)
            self._negative_embeds = self._encode_negative_prompt()

    def warmup(self, batch_sizes: Sequence[int], *, width: int = 512, height: int = 512) -> None:
        """Load, then run each batch size once per mode (2 steps) so kernels and memory are ready.

        In deterministic mode every call has the fixed size, so only that size is warmed.
        """
        self.load()
        if self.deterministic:
            batch_sizes = [self.deterministic_batch_size]
        working_w, working_h = self.profile.working_size(width, height)
        control = Image.new("RGB", (working_w, working_h))
        for mode in self._pipelines:
            for size in batch_sizes:
                job = DecodeJob((), control if mode == Mode.PICS else None, 0, width, height,
                                working_w, working_h, mode, 2, self.profile.guidance)
                self.decode_batch([replace(job, seed=i) for i in range(size)])

    # -- decoding --------------------------------------------------------------------------

    def decode_batch(self, jobs: Sequence[DecodeJob], *, should_stop: Callable[[], bool] | None = None,
                     resize: bool = True) -> list[Image.Image]:
        """Regenerate one image per job, in order, at each job's original size (working size with ``resize=False``).

        ``should_stop`` is checked after every diffusion step; True ends the batch with ``DecodeInterruptedError``.
        """
        if not jobs:
            return []
        self.load()
        self._check_jobs(jobs)
        run = self._generate_fixed_batches if self.deterministic else self._generate
        with self._lock:
            self._should_stop = should_stop
            try:
                arrays = run_splitting_on_oom(list(jobs), run, self._on_oom)
            finally:
                self._should_stop = None
        return [self._postprocess(array, job, resize) for array, job in zip(arrays, jobs, strict=True)]

    def render_candidates(self, job: DecodeJob, seeds: Sequence[int]) -> list[Image.Image]:
        """The same job drawn with each seed (candidate selection), in one batch."""
        return self.decode_batch([replace(job, seed=int(seed)) for seed in seeds])

    # Stage 1
    def _check_jobs(self, jobs: Sequence[DecodeJob]) -> None:
        key = jobs[0].bucket_key()
        vocab_size = self._pipelines[Mode.PIC].text_encoder.config.vocab_size
        for job in jobs:
            if job.bucket_key() != key:
                raise ValueError(f"decode_batch needs jobs of one bucket; got {job.bucket_key()} and {key}")
            if Mode(job.mode) not in self._pipelines:
                raise ValueError(f"profile {self.profile.name!r} has no ControlNet, so it cannot decode PICS payloads")
            if any(not 0 <= i < vocab_size for i in job.token_ids):
                raise ValueError(f"token ids must lie in 0..{vocab_size - 1}")
            if job.working_width % 8 or job.working_height % 8 or job.working_width < 8 or job.working_height < 8:
                raise ValueError(f"working size must be positive multiples of 8, got {job.working_width}x{job.working_height}")
            if job.width < 1 or job.height < 1 or job.steps < 1 or not 0 <= job.seed < 2**64:
                raise ValueError("output size and steps must be positive and the seed in 0..2**64-1")
            if job.mode == Mode.PICS:
                if job.control is None or job.control.size != (job.working_width, job.working_height):
                    raise ValueError(
                        f"a PICS job needs an RGB control image of the working size "
                        f"{job.working_width}x{job.working_height}; build it with services.sketch.render.control_image"
                    )
            elif job.control is not None:
                raise ValueError("a PIC job carries no control image; set control=None")

    # Stage 2
    def prompt_ids(self, token_ids: Sequence[int]) -> list[int]:
        """The 77 text-encoder input ids for transmitted ``token_ids``: BOS, ids, suffix, EOS, padding."""
        tokenizer = self._pipelines[Mode.PIC].tokenizer
        length = context_length(tokenizer, self._pipelines[Mode.PIC].text_encoder)
        if len(token_ids) > length - 2:
            raise ValueError(f"at most {length - 2} token ids fit the text encoder, got {len(token_ids)}")
        if self._suffix_ids is None:  # tokenised once
            self._suffix_ids = list(tokenizer(self.profile.prompt_suffix, add_special_tokens=False)["input_ids"])
        suffix = self._suffix_ids
        body = [*token_ids, *suffix][: length - 2]  # only the suffix is ever cut
        ids = [tokenizer.bos_token_id, *body, tokenizer.eos_token_id]
        return ids + [tokenizer.pad_token_id] * (length - len(ids))

    def _encode_ids(self, ids: list[int]):
        import torch

        pipeline = self._pipelines[Mode.PIC]
        with torch.no_grad():
            tensor = torch.tensor([ids], dtype=torch.long, device=self.device)
            return pipeline.text_encoder(tensor)[0]

    def _encode_negative_prompt(self):
        pipeline = self._pipelines[Mode.PIC]
        length = context_length(pipeline.tokenizer, pipeline.text_encoder)
        ids = pipeline.tokenizer(self.profile.negative_prompt, padding="max_length", max_length=length, truncation=True)["input_ids"]
        return self._encode_ids(list(ids))

    def _prompt_embeddings(self, jobs: Sequence[DecodeJob]):
        import torch

        positive = torch.cat([self._encode_ids(self.prompt_ids(job.token_ids)) for job in jobs])
        negative = self._negative_embeds.expand(len(jobs), -1, -1)
        return positive, negative

    # Stage 4
    @staticmethod
    def _generators(jobs: Sequence[DecodeJob]) -> list:
        import torch

        return [torch.Generator("cpu").manual_seed(int(job.seed)) for job in jobs]

    # Stage 5
    def _generate(self, jobs: Sequence[DecodeJob]) -> list[np.ndarray]:
        """One pipeline call for ``jobs``: float RGB arrays in [0, 1] at the working size."""
        import torch

        first = jobs[0]
        positive, negative = self._prompt_embeddings(jobs)
        arguments = {
            "prompt_embeds": positive,
            "negative_prompt_embeds": negative,
            "height": first.working_height,
            "width": first.working_width,
            "num_inference_steps": first.steps,
            "guidance_scale": first.guidance,
            "generator": self._generators(jobs),
            "output_type": "np",
        }
        if first.mode == Mode.PICS:
            arguments["image"] = [job.control.convert("RGB") for job in jobs]  # Stage 3
        if self._should_stop is not None:
            arguments["callback_on_step_end"] = self._step_end
        with torch.no_grad():
            images = self._pipelines[Mode(first.mode)](**arguments).images
        return list(images)

    def _generate_fixed_batches(self, jobs: Sequence[DecodeJob]) -> list[np.ndarray]:
        """``settings.deterministic``: every call runs exactly ``deterministic_batch_size`` images.

        Short chunks are padded with copies of their last job and the copies dropped.
        Batched kernels compute each sample the same way for a fixed batch shape
        whatever its slot or neighbours, so a job's pixels no longer depend on the
        batch it arrived in (checked bit-for-bit on CPU in the tests).
        """
        size = self.deterministic_batch_size
        arrays: list[np.ndarray] = []
        for start in range(0, len(jobs), size):
            chunk = list(jobs[start : start + size])
            padded = chunk + [chunk[-1]] * (size - len(chunk))
            arrays.extend(self._generate(padded)[: len(chunk)])
        return arrays

    def _step_end(self, pipeline, step: int, timestep, callback_kwargs: dict) -> dict:
        if self._should_stop is not None and self._should_stop():
            raise DecodeInterruptedError(f"batch stopped after diffusion step {step + 1}")
        return callback_kwargs

    def _on_oom(self) -> None:
        self._free_memory()
        if self.on_oom_split is not None:
            self.on_oom_split()

    def _free_memory(self) -> None:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # Stage 6
    @staticmethod
    def _postprocess(array: np.ndarray, job: DecodeJob, to_output_size: bool = True) -> Image.Image:
        pixels = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        image = Image.fromarray(pixels, "RGB")
        return resize(image, job.width, job.height) if to_output_size else image


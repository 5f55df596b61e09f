"""Evaluation harness: rate and quality over a folder of images, against classical codecs.

For every image and mode the codec runs in-process (``services.codec`` and a
``Reconstructor``) or through the running services (``services.serving.client``), and
per image the harness records the exact payload bytes, bpp of the original
(``bytes * 8 / (W * H)``), prompt and sketch body bytes, encode and decode
time, and the metrics of ``services.eval.suite.MetricSuite``. For the same byte
budget, WebP and JPEG baselines (``services.eval.baselines``) are scored the same
way. ``services.eval.report`` writes the CSV/JSON, markdown table and RD plots.

Entry points: ``run_eval`` (library, ``textsketch eval``) and ``main(argv)``
(the command line of ``textsketch eval`` and ``bench/eval.py``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from services.bitstream.container import Mode, parse
from services.eval.baselines import fit_to_budget
from services.eval.metrics import ALL_METRICS
from services.eval.suite import MetricSuite
from services.imaging import load_image_file
from services.profiles import PROFILES_BY_ID
from services.settings import CodecSettings

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm")
CODEC_METHOD = "textsketch"


def default_image_dir() -> Path:
    """``<repo>/../shared/data/kodak`` (the repo is this package's parent folder)."""
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "kodak"


@dataclass(frozen=True)
class ImageRecord:
    """One method's result on one image in one mode (one CSV row)."""

    image: str
    method: str  # "textsketch", "webp" or "jpeg"
    mode: str  # "pic" or "pics"
    width: int
    height: int
    n_bytes: int
    bpp: float
    prompt_bytes: int | None = None
    sketch_bytes: int | None = None
    prompt_tokens: int | None = None
    budget: int | None = None  # baselines: the payload size they had to fit
    fits: bool = True  # baselines: whether any file fitted the budget
    coded_size: str = ""  # baselines: coded WxH
    encode_ms: float | None = None
    decode_ms: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    reconstruction: str = ""  # path relative to the output folder
    prompt_text: str = ""
    note: str = ""


@dataclass(frozen=True)
class EvalSummary:
    """What a run produced: per-image records, set metrics per group, skips and output files."""

    records: tuple[ImageRecord, ...]
    groups: tuple[dict, ...]  # one row per (method, mode): means, FID/KID
    skipped: dict[str, str]
    files: dict[str, str]
    settings: dict


def list_images(image_dir: str | Path, limit: int | None = None) -> list[Path]:
    folder = Path(image_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist; pass --images DIR (default: Kodak in ../shared/data/kodak)")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return paths[:limit] if limit else paths


class InProcessCodec:
    """Encode with ``services.codec``; decode with one warm ``Reconstructor``."""

    def __init__(self, settings: CodecSettings, decode: bool) -> None:
        self.settings = settings
        self.reconstructor = None
        if decode:
            from services.reconstruction.reconstructor import Reconstructor

            self.reconstructor = Reconstructor(settings.model_profile(), settings)
            self.reconstructor.load()

    def encode(self, image: Image.Image, path: Path, mode: Mode, options: dict) -> bytes:
        from services.codec import EncodeOptions, encode_image

        return encode_image(image, self.settings, EncodeOptions(mode=mode, **options)).data

    def decode(self, data: bytes) -> Image.Image:
        from services.codec import decode_payload

        return decode_payload(data, self.reconstructor)

    def close(self) -> None:
        """Nothing to release: the reconstructor lives as long as the caller keeps it."""


class ServiceCodec:
    """Encode and decode through the running services with ``services.serving.client``."""

    def __init__(self, encoder_url: str, decoder_url: str | None) -> None:
        from services.serving.client import TextSketchClient

        # Busy services answer 429/503: retried with their Retry-After (the wait counts in the timings).
        self.client = TextSketchClient(encoder_url, decoder_url, retries=5)

    def encode(self, image: Image.Image, path: Path, mode: Mode, options: dict) -> bytes:
        return self.client.encode(path, mode=mode, **options)

    def decode(self, data: bytes) -> Image.Image:
        import io

        return Image.open(io.BytesIO(self.client.decode(data, fmt="png"))).convert("RGB")

    def close(self) -> None:
        self.client.close()


def _prompt_info(data: bytes) -> tuple[int, str]:
    from services.bitstream.text_coder import decode_token_ids
    from services.prompt.tokenizer import ids_to_text

    ids = decode_token_ids(parse(data).prompt)
    return len(ids), ids_to_text(ids)


def _save(image: Image.Image, out_dir: Path, method: str, mode: str, stem: str, save: bool) -> str:
    if not save:
        return ""
    relative = Path("reconstructions") / f"{method}-{mode}" / f"{stem}.png"
    (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    image.save(out_dir / relative)
    return relative.as_posix()


def _encode_options(prompt_source, text, captions, stem, quality, target_bytes) -> dict:
    chosen = captions.get(stem, text) if captions else text
    if prompt_source == "given" and chosen is None:
        raise ValueError(f"prompt source 'given' needs --text or a --captions entry for {stem!r}")
    return {"prompt_source": prompt_source, "text": chosen, "quality": quality, "target_bytes": target_bytes}


def run_eval(
    image_dir: str | Path | None,
    out_dir: str | Path,
    settings: CodecSettings,
    modes: Sequence[str | Mode] = ("pic", "pics"),
    limit: int | None = None,
    *,
    encoder_url: str | None = None,
    decoder_url: str | None = None,
    prompt_source: str | None = None,
    text: str | None = None,
    captions: dict[str, str] | None = None,
    quality: int | None = None,
    target_bytes: int | None = None,
    metrics: Sequence[str] = ALL_METRICS,
    baselines: Sequence[str] = ("webp", "jpeg"),
    decode: bool = True,
    save_images: bool = True,
    progress: bool = True,
) -> EvalSummary:
    """Evaluate the codec (and baselines at the same bytes) on every image of ``image_dir``.

    In-process unless ``encoder_url`` is given (then ``decoder_url`` is needed to
    decode). With ``decode=False`` only rates are measured (no decoder, no metrics
    of the codec; baselines are still scored). Writes everything under ``out_dir``
    and returns the summary.
    """
    from tqdm import tqdm

    from services.codec import parse_mode
    from services.eval.report import group_rows, write_outputs

    paths = list_images(image_dir or default_image_dir(), limit)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mode_list = [parse_mode(m) for m in modes]
    if encoder_url:
        if decode and not decoder_url:
            raise ValueError("through the services, decoding needs --decoder-url (or pass --no-decode)")
        codec = ServiceCodec(encoder_url, decoder_url)
    else:
        codec = InProcessCodec(settings, decode)
    suite = MetricSuite(settings, tuple(metrics))
    suite.load()

    records: list[ImageRecord] = []
    profiles_seen: set[int] = set()
    warmed: set[Mode] = set()
    for path in tqdm(paths, desc="eval", unit="img", disable=not progress):
        original = load_image_file(path, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels)
        width, height = original.size
        options = _encode_options(prompt_source, text, captions, path.stem, quality, target_bytes)
        for mode in mode_list:
            mode_name = mode.name.lower()
            if mode not in warmed:  # first call loads models: keep it out of the timings
                data = codec.encode(original, path, mode, options)
                if decode:
                    codec.decode(data)
                warmed.add(mode)
            start = time.perf_counter()
            data = codec.encode(original, path, mode, options)
            encode_ms = (time.perf_counter() - start) * 1000
            payload = parse(data)
            profiles_seen.add(payload.profile)
            n_tokens, prompt_text = _prompt_info(data)
            record = {
                "image": path.name, "method": CODEC_METHOD, "mode": mode_name, "width": width, "height": height,
                "n_bytes": len(data), "bpp": len(data) * 8 / (width * height), "prompt_bytes": len(payload.prompt),
                "sketch_bytes": len(payload.sketch or b""), "prompt_tokens": n_tokens, "encode_ms": encode_ms,
                "prompt_text": prompt_text,
            }
            if decode:
                start = time.perf_counter()
                recon = codec.decode(data)
                record["decode_ms"] = (time.perf_counter() - start) * 1000
                record["metrics"] = suite.pair(original, recon)
                suite.add_to_set(f"{CODEC_METHOD}/{mode_name}", original, recon)
                record["reconstruction"] = _save(recon, out_dir, CODEC_METHOD, mode_name, path.stem, save_images)
            records.append(ImageRecord(**record))
            for name in baselines:
                start = time.perf_counter()
                result = fit_to_budget(original, len(data), name)
                elapsed = (time.perf_counter() - start) * 1000
                records.append(ImageRecord(
                    image=path.name, method=name, mode=mode_name, width=width, height=height,
                    n_bytes=result.n_bytes, bpp=result.bpp(width, height), budget=len(data), fits=result.fits,
                    coded_size=f"{result.coded_width}x{result.coded_height}" if result.fits else "",
                    encode_ms=elapsed, metrics=suite.pair(original, result.image),
                    reconstruction=_save(result.image, out_dir, name, mode_name, path.stem, save_images),
                    note=result.note,
                ))
                suite.add_to_set(f"{name}/{mode_name}", original, result.image)

    codec.close()
    run_settings = {
        "profile": ",".join(PROFILES_BY_ID[p].name for p in sorted(profiles_seen)), "modes": [m.name.lower() for m in mode_list],
        "prompt_source": prompt_source or settings.prompt_source, "text": text, "captions": bool(captions),
        "quality": settings.sketch_quality if quality is None else quality, "target_bytes": target_bytes,
        "via_services": bool(encoder_url), "decode": decode, "images": str(Path(image_dir or default_image_dir())),
        "n_images": len(paths),
    }
    groups = group_rows(records, suite.set_scores())
    files = write_outputs(out_dir, records, groups, suite.skipped, run_settings, suite.active)
    return EvalSummary(tuple(records), tuple(groups), dict(suite.skipped), files, run_settings)


def load_captions(path: str | Path | None) -> dict[str, str] | None:
    """A JSON object mapping image file stems (``kodim01``) to prompt texts."""
    if path is None:
        return None
    captions = json.loads(Path(path).read_text())
    if not isinstance(captions, dict) or not all(isinstance(v, str) for v in captions.values()):
        raise ValueError(f"{path} must hold a JSON object of image stem -> text")
    return captions


def main(argv: Sequence[str] | None = None) -> int:
    from services.eval.report import build_parser, print_summary

    argv = list(argv) if argv is not None else None
    if argv and argv[0] == "--":  # ``textsketch eval -- --limit 2`` forwards the separator too
        argv = argv[1:]
    args = build_parser(default_image_dir()).parse_args(argv)
    overrides = {k: v for k, v in {"profile": args.profile, "device": args.device}.items() if v}
    settings = CodecSettings(**overrides)
    summary = run_eval(
        args.images, args.out, settings, modes=args.modes, limit=args.limit,
        encoder_url=args.encoder_url, decoder_url=args.decoder_url, prompt_source=args.prompt_source,
        text=args.text, captions=load_captions(args.captions), quality=args.quality,
        target_bytes=args.target_bytes, metrics=args.metrics, baselines=args.baselines,
        decode=not args.no_decode, save_images=not args.no_save, progress=not args.quiet,
    )
    print_summary(summary)
    return 0

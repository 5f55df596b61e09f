"""Hostile image uploads against a real encoder process: status, answer time and the server's peak memory growth.

A real uvicorn encoder on 127.0.0.1 (tiny profile, ``prompt_source=given`` so the
prompt stage needs no model; the real sketch stage runs). For every image of
``services.testing.hostile.hostile_images`` (plus a legal 36 Mpx flat PNG, the
largest image the default 40 Mpx limit lets through, as the bounded worst case,
and a 100 MB multipart upload sent chunked, without Content-Length) the script resets the process's peak-RSS mark (``/proc/<pid>/clear_refs``,
Linux), sends the upload ``--repeat`` times, and reads ``VmHWM``: peak growth =
peak RSS during the requests - RSS before them.

    python bench/hostile_images.py --repeat 3

Prints a table and writes ``bench/out/hostile_images.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
from PIL import Image

from services.testing.hostile import HostileImage, hostile_images
from services.testing.load import proc_kib, reset_peak_rss
from services.testing.servers import start_process


def flat_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (120, 140, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Streamed:
    """An upload sent chunked (no Content-Length): ``body()`` yields ``upload_bytes`` bytes."""

    name: str
    body: Callable[[], Iterator[bytes]]
    content_type: str
    expected: tuple[int, ...]
    upload_bytes: int


BOUNDARY = "hostile-images-boundary"


def chunked_multipart(total: int, chunk: int = 1024 * 1024) -> Iterator[bytes]:
    """A multipart/form-data body whose field ``image`` is a PNG signature and ``total`` bytes of zeros."""
    yield (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n"
           f"Content-Type: image/png\r\n\r\n").encode() + b"\x89PNG\r\n\x1a\n"
    for _ in range(total // chunk):
        yield b"\0" * chunk
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-upload-bytes", type=int, default=32 * 1024 * 1024)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "hostile_images.json")
    args = parser.parse_args()

    items = hostile_images(args.max_upload_bytes)
    items.append(HostileImage("legal_flat_png_6000x6000", flat_png(6000), "image/png", (200,)))
    items.append(Streamed("multipart_chunked_100MB", lambda: chunked_multipart(100_000_000),
                          f"multipart/form-data; boundary={BOUNDARY}", (413,), 100_000_000))
    work = Path(tempfile.mkdtemp(prefix="hostile-images-"))
    # given prompts: the encoder's background warm-up then needs no caption model
    env = {"TEXTSKETCH_CACHE_DIR": os.environ.get("TEXTSKETCH_CACHE_DIR", str(work / "cache")),
           "TEXTSKETCH_ENCODER_MAX_UPLOAD_BYTES": str(args.max_upload_bytes), "TEXTSKETCH_PROMPT_SOURCE": "given"}
    service = start_process("encoder_service.app:create_app", env, work)
    rows = []
    try:
        service.wait_ready(300)
        pid = service.process.pid
        with httpx.Client(timeout=300) as client:
            # one ordinary encode first, so lazily imported code is not counted against the first hostile image
            client.post(f"{service.url}/encode", params={"prompt_source": "given", "text": "warm"},
                        content=items[-3].data, headers={"Content-Type": "image/png"})
            for item in items:
                headers = {"Content-Type": item.content_type} if item.content_type else {}
                rss_before = reset_peak_rss(pid)
                statuses, times, detail = [], [], ""
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    content = item.body() if isinstance(item, Streamed) else item.data
                    response = client.post(f"{service.url}/encode", params={"prompt_source": "given", "text": "a house"},
                                           content=content, headers=headers)
                    times.append(time.perf_counter() - start)
                    statuses.append(response.status_code)
                    if response.status_code != 200:
                        detail = response.json().get("detail", "")
                peak = proc_kib(pid, "VmHWM")
                upload_bytes = item.upload_bytes if isinstance(item, Streamed) else len(item.data)
                rows.append({"image": item.name, "upload_bytes": upload_bytes, "statuses": sorted(set(statuses)),
                             "expected": list(item.expected), "ok": all(s in item.expected for s in statuses),
                             "seconds_max": round(max(times), 3), "peak_growth_mb": round((peak - rss_before) / 1024, 1),
                             "rss_mb_before": round(rss_before / 1024, 1), "detail": detail[:120]})
                row = rows[-1]
                print(f"{row['image']:30s} {row['statuses']!s:8s} ok={row['ok']!s:5s} "
                      f"{row['seconds_max']:7.3f} s  peak +{row['peak_growth_mb']:7.1f} MB  {row['detail'][:70]}")
        ready = httpx.get(f"{service.url}/health/ready", timeout=10).status_code
    finally:
        service.stop()
    refused = [r for r in rows if 200 not in r["expected"]]
    summary = {"command": " ".join(sys.argv), "repeat": args.repeat, "max_upload_bytes": args.max_upload_bytes,
               "max_image_pixels": 40_000_000, "all_ok": all(r["ok"] for r in rows), "ready_after": ready,
               "refused_max_seconds": max(r["seconds_max"] for r in refused),
               "refused_max_peak_growth_mb": max(r["peak_growth_mb"] for r in refused),
               "accepted_max_peak_growth_mb": max(r["peak_growth_mb"] for r in rows if 200 in r["expected"]),
               "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1))
    print({k: v for k, v in summary.items() if k != "rows"})
    print(f"wrote {args.out}")
    return 0 if summary["all_ok"] and ready == 200 else 1


if __name__ == "__main__":
    raise SystemExit(main())

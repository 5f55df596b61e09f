"""Outputs of an evaluation run: per-image CSV/JSON, the markdown table, RD plots, the CLI.

Files written under the output folder:

- ``per_image.csv`` / ``per_image.json``: one row per image, method and mode;
- ``summary.json``: run settings, group means, FID/KID, skipped metrics and why;
- ``summary.md``: the markdown table (mean per method and mode);
- ``rd_<metric>.png``: bpp (log) against each metric, one point per image, means joined per method;
- ``reconstructions/<method>-<mode>/<image>.png`` (written by the harness).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from statistics import fmean, median

from services.eval.metrics import ALL_METRICS

LOWER_IS_BETTER = {"lpips", "dists", "clip_distance", "fid", "kid"}
BASE_COLUMNS = (
    "image", "method", "mode", "width", "height", "n_bytes", "bpp", "prompt_bytes", "sketch_bytes",
    "prompt_tokens", "budget", "fits", "coded_size", "encode_ms", "decode_ms",
)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    if any(math.isinf(v) for v in values):
        return math.inf
    return fmean(values)


def group_rows(records, set_scores: dict[str, dict[str, float]]) -> list[dict]:
    """Means per (method, mode), in first-seen order, with FID/KID of the group."""
    groups: dict[tuple[str, str], list] = {}
    for record in records:
        groups.setdefault((record.method, record.mode), []).append(record)
    rows = []
    for (method, mode), members in groups.items():
        metric_names = sorted({name for r in members for name in r.metrics})
        row = {
            "method": method, "mode": mode, "n": len(members),
            "fits": sum(r.fits for r in members),
            "bytes": _mean(r.n_bytes for r in members), "bpp": _mean(r.bpp for r in members),
            "prompt_bytes": _mean(r.prompt_bytes for r in members),
            "sketch_bytes": _mean(r.sketch_bytes for r in members),
            "prompt_tokens": _mean(r.prompt_tokens for r in members),
            "encode_ms": _mean(r.encode_ms for r in members),
            "encode_ms_median": median([r.encode_ms for r in members if r.encode_ms is not None] or [0.0]),
            "decode_ms": _mean(r.decode_ms for r in members),
        }
        for name in metric_names:
            row[name] = _mean(r.metrics.get(name) for r in members)
        row.update(set_scores.get(f"{method}/{mode}", {}))
        rows.append(row)
    return rows


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        if abs(value) < 0.01 and value != 0:
            return f"{value:.5f}"
        return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def markdown_table(groups: Sequence[dict], metrics: Sequence[str]) -> str:
    columns = ["method", "mode", "n", "fits", "bytes", "bpp", "prompt_bytes", "sketch_bytes", "encode_ms", "decode_ms"]
    columns += [m for m in ALL_METRICS if m in metrics]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in groups:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _record_row(record) -> dict:
    row = {column: getattr(record, column) for column in BASE_COLUMNS}
    row.update({f"m_{k}": v for k, v in record.metrics.items()})
    row.update(reconstruction=record.reconstruction, prompt_text=record.prompt_text, note=record.note)
    return row


def _json_safe(value):
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def rd_plots(out_dir: Path, records, metrics: Sequence[str]) -> list[str]:
    """One PNG per pair metric: bpp (log x) against the metric, per-image points and group means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    written = []
    methods = list(dict.fromkeys(r.method for r in records))
    for metric in [m for m in metrics if m not in ("fid", "kid")]:
        figure, axes = plt.subplots(figsize=(6, 4.2))
        for index, method in enumerate(methods):
            color = f"C{index}"
            points = [r for r in records if r.method == method and r.n_bytes > 0 and metric in r.metrics
                      and math.isfinite(r.metrics[metric])]
            if not points:
                continue
            axes.scatter([r.bpp for r in points], [r.metrics[metric] for r in points], s=10, alpha=0.35, color=color)
            means = []
            for mode in dict.fromkeys(r.mode for r in points):
                group = [r for r in points if r.mode == mode]
                means.append((fmean(r.bpp for r in group), fmean(r.metrics[metric] for r in group), mode))
            means.sort()
            axes.plot([m[0] for m in means], [m[1] for m in means], "o-", color=color, label=method)
            for x, y, mode in means:
                axes.annotate(mode, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        axes.set_xscale("log")
        axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes.set_xlabel("bits per pixel (log)")
        axes.set_ylabel(metric + (" (lower is better)" if metric in LOWER_IS_BETTER else ""))
        axes.grid(True, which="both", alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
        figure.tight_layout()
        name = f"rd_{metric}.png"
        figure.savefig(out_dir / name, dpi=120)
        plt.close(figure)
        written.append(name)
    return written


def write_outputs(out_dir: Path, records, groups, skipped: dict[str, str], run_settings: dict, metrics) -> dict[str, str]:
    rows = [_record_row(r) for r in records]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(out_dir / "per_image.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / "per_image.json").write_text(json.dumps(_json_safe([asdict(r) for r in records]), indent=1))
    summary = {"settings": run_settings, "groups": groups, "skipped": skipped, "metrics": list(metrics)}
    (out_dir / "summary.json").write_text(json.dumps(_json_safe(summary), indent=1))
    lines = ["# Evaluation summary", "", "Settings: " + ", ".join(f"{k}={v}" for k, v in run_settings.items()), ""]
    lines += [markdown_table(groups, metrics), ""]
    lines += [(
        "bpp = payload bytes * 8 / (width * height) of the original; baselines fit the same bytes per image "
        "(`fits` counts images where any file fitted; otherwise the receiver gets a flat grey image)."
    )]
    if skipped:
        lines += ["", "Skipped metrics:", ""] + [f"- {name}: {reason}" for name, reason in skipped.items()]
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")
    files = {"csv": "per_image.csv", "json": "per_image.json", "summary_json": "summary.json", "summary_md": "summary.md"}
    for name in rd_plots(out_dir, records, metrics):
        files[name[:-4]] = name
    return {key: str(out_dir / value) for key, value in files.items()}


def print_summary(summary) -> None:
    metrics = [m for m in ALL_METRICS if any(m in row for row in summary.groups)]
    print(markdown_table(summary.groups, metrics))
    for name, reason in summary.skipped.items():
        print(f"skipped {name}: {reason}")
    print("wrote: " + ", ".join(summary.files.values()))


def build_parser(default_images: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textsketch eval", description="Rate/quality evaluation over a folder of images.")
    parser.add_argument("--images", default=str(default_images), help=f"image folder (default: {default_images})")
    parser.add_argument("--out", default="bench/out/eval", help="output folder (default: bench/out/eval)")
    parser.add_argument("--modes", nargs="+", default=["pic", "pics"], choices=["pic", "pics"])
    parser.add_argument("--limit", type=int, help="only the first N images (sorted by name)")
    parser.add_argument("--profile", help="model profile (default: TEXTSKETCH_PROFILE or sd21-hed)")
    parser.add_argument("--device", help="torch device: auto, cpu, cuda")
    parser.add_argument("--prompt-source", choices=["pez", "caption", "given"], help="default: the settings'")
    parser.add_argument("--text", help="prompt text for every image (prompt source given)")
    parser.add_argument("--captions", help="JSON file: image stem -> prompt text (prompt source given)")
    parser.add_argument("--quality", type=int, help="sketch quality level")
    parser.add_argument("--target-bytes", type=int, help="sketch byte budget")
    parser.add_argument("--metrics", nargs="+", default=list(ALL_METRICS), choices=list(ALL_METRICS))
    parser.add_argument("--baselines", nargs="*", default=["webp", "jpeg"], choices=["webp", "jpeg"])
    parser.add_argument("--encoder-url", help="evaluate through a running encoder service")
    parser.add_argument("--decoder-url", help="... and a running decoder service")
    parser.add_argument("--no-decode", action="store_true", help="rates only: skip the decoder and its metrics")
    parser.add_argument("--no-save", action="store_true", help="do not save reconstructions")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser

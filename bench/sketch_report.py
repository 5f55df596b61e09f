"""Sketch benchmark, the report half: summary table, equal-fidelity table and RD plot."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from bench.sketch_compare import JBIG_BIH_BYTES, KODAK_PIXELS, equal_fidelity, pareto_front
from services.profiles import SketchKind


def summarise(rows, jbig_rows, points, hed_ms, n_images, args) -> tuple[list[dict], list[dict]]:
    summary = []
    for point, value in points:
        sel = [r for r in rows if r["point"] == f"{point}{value}"]

        def mean(key, sel=sel):
            values = [r[key] for r in sel if r[key] is not None]
            return statistics.fmean(values) if values else None

        entry = {"point": f"{point}{value}", "images": len(sel)}
        for key in (
            "bytes",
            "bpp",
            "f_score",
            "precision",
            "recall",
            "ms_ssim",
            "encode_ms",
            "decode_ms",
            "encode_cpu_ms",
            "decode_cpu_ms",
            "map_pixels",
            "png1bit",
            "zlib",
            "zstd",
            "jbig",
        ):
            entry[key] = mean(key)
        entry["encode_ms_max"] = max(r["encode_ms"] for r in sel)
        entry["decode_ms_max"] = max(r["decode_ms"] for r in sel)
        entry["max_bytes"] = max(r["bytes"] for r in sel)
        if entry["jbig"]:
            entry["bytes_vs_jbig"] = entry["bytes"] / entry["jbig"]
        summary.append(entry)
    curve = equal_fidelity(summary, rows, jbig_rows) if jbig_rows else []
    kind = args.kind
    with open(args.out / f"sketch_{kind}_summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    meta = {
        "images": n_images,
        "kind": kind,
        "tolerance_px": args.tolerance,
        "hed_ms": hed_ms,
        "points": summary,
        "jbig_rd_curve": curve,
        "notes": {
            "same_map": "JBIG1 (best of 5 pbmtojbg option sets) on the very low-res bitmap our lossless stage codes",
            "equal_fidelity": "JBIG1 on the binarised, block-OR-downsampled map WITHOUT thinning/corner removal/pruning, "
            "every threshold x factor in the curve, scored after the best decoder-side drawing of a set ('all': links, "
            "thin_links, blocks = nearest-neighbour upsampling; 'lines': links, thin_links; 'thin': thin_links); bytes at our fidelity by "
            "log-bytes-linear interpolation between neighbouring points of its Pareto front; how='bound': our fidelity "
            "is below JBIG1's least faithful point, whose bytes are then an upper bound (so is the saving); "
            "how='above': beyond JBIG1's most faithful point (None)",
            "nobih": f"JBIG1 bytes minus its {JBIG_BIH_BYTES}-byte BIH header",
        },
    }
    (args.out / f"sketch_{kind}_summary.json").write_text(json.dumps(meta, indent=2))
    header = (
        f"{'point':>10} {'bytes':>7} {'max':>5} {'bpp':>7} {'F@' + str(args.tolerance):>6} {'MS-SSIM':>7} "
        f"{'enc ms':>7} {'max':>6} {'cpu':>6} {'dec ms':>7} {'max':>6} {'cpu':>6} "
        f"{'png':>6} {'zlib':>6} {'zstd':>6} {'jbig':>6} {'ours/jbig':>9}"
    )
    print(f"\n{kind} sketches, {n_images} Kodak images (means; max = largest; cpu = process time, ms)")
    print(header)
    for e in summary:

        def fmt(v, spec):
            return format(v, spec) if v is not None else "-"

        print(
            f"{e['point']:>10} {e['bytes']:7.1f} {e['max_bytes']:5d} {e['bpp']:7.4f} {e['f_score']:6.3f} "
            f"{e['ms_ssim']:7.3f} {e['encode_ms']:7.1f} {e['encode_ms_max']:6.0f} {e['encode_cpu_ms']:6.1f} "
            f"{e['decode_ms']:7.1f} {e['decode_ms_max']:6.0f} {e['decode_cpu_ms']:6.1f} {fmt(e['png1bit'], '6.1f')} "
            f"{fmt(e['zlib'], '6.1f')} {fmt(e['zstd'], '6.1f')} {fmt(e['jbig'], '6.1f')} "
            f"{fmt(e.get('bytes_vs_jbig'), '9.3f')}"
        )
    if curve:
        print_equal_fidelity(summary, curve)
    if hed_ms:
        print(f"HED network alone: {statistics.fmean(hed_ms):.0f} ms per image (mean of {len(hed_ms)}, wall clock)")
    return summary, curve


def print_equal_fidelity(summary, curve) -> None:
    def pct(v, how="interpolated"):
        if v is None:
            return "above"
        return ("<=" if how == "bound" else "") + f"{100 * v:+.1f}%"

    print("\nJBIG1's own RD curve: binarised + block-OR map as it is (no thinning/corner removal/pruning);")
    print("means over images; per configuration the best decoder-side drawing (all: links, thin_links, blocks)")
    print(
        f"{'config':>10} {'jbig B':>8} {'F all':>6} {'drawing':>11} {'F lines':>7} {'F thin':>6} {'MS all':>7} "
        f"{'drawing':>11} {'MS thin':>7}"
    )
    for c in sorted(curve, key=lambda c: c["jbig"]):
        print(
            f"{c['config']:>10} {c['jbig']:8.1f} {c['f_score_all']:6.3f} {c['f_score_all_rendering']:>11} "
            f"{c['f_score_lines']:7.3f} {c['f_score_thin']:6.3f} {c['ms_ssim_all']:7.3f} "
            f"{c['ms_ssim_all_rendering']:>11} {c['ms_ssim_thin']:7.3f}"
        )
    print(
        "\nOurs vs JBIG1: saving = 1 - ours / JBIG1 (positive: we are smaller; target >= +20%); -BIH: JBIG1 "
        f"without its {JBIG_BIH_BYTES}-byte header;\n<= : upper bound (JBIG1's least faithful point is more faithful "
        "and cheaper); above: beyond JBIG1's most faithful point"
    )
    groups = (
        ("f_score_all", "@F all"),
        ("f_score_lines", "@F lines"),
        ("f_score_thin", "@F thin"),
        ("ms_ssim_all", "@MS all"),
        ("ms_ssim_thin", "@MS thin"),
    )
    head = "".join(f" | {label:>9} {'saving':>9} {'-BIH':>9}" for _, label in groups)
    print(f"{'point':>10} {'ours B':>7} | {'same map':>9} {'-BIH':>7}{head}")
    for e in summary:
        line = (
            f"{e['point']:>10} {e['bytes']:7.1f} | {pct(e['saving_same_map']):>9} {pct(e['saving_same_map_nobih']):>7}"
        )
        for key, _ in groups:
            how = e[f"equal_{key}_how"]
            equal = e[f"jbig_equal_{key}"]
            line += (
                f" | {(f'{equal:.1f}' if equal is not None else '-'):>9} {pct(e[f'saving_equal_{key}'], how):>9} "
                f"{pct(e[f'saving_equal_{key}_nobih'], how):>9}"
            )
        print(line)


def plot(summary, curve, path: Path, kind: SketchKind) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [e for e in summary if e["point"].startswith("q")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in (
        (axes[0], "f_score", "edge F-score (2 px)"),
        (axes[1], "ms_ssim", "MS-SSIM (control images)"),
    ):
        y = [e[key] for e in levels]
        ax.plot([e["bpp"] for e in levels], y, "o-", label="ours (chain coder)")
        for base, style in (("jbig", "s--"), ("zstd", "^:"), ("png1bit", "x:")):
            if all(e[base] for e in levels):
                ax.plot([e[base] * 8 / KODAK_PIXELS for e in levels], y, style, label=f"{base} (same maps)")
        if curve:
            for name, style in (("all", "kd-"), ("thin", "cd--")):
                front = pareto_front([(c[f"{key}_{name}"], c["jbig"]) for c in curve])
                ax.plot(
                    [b * 8 / KODAK_PIXELS for _, b in front],
                    [f for f, _ in front],
                    style,
                    lw=1.2,
                    label=f"JBIG1 own RD curve, unthinned maps ({name} drawings)",
                )
        for e in summary:
            if e["point"].startswith("budget"):
                ax.plot([e["bpp"]], [e[key]], "r*", markersize=12, label=f"ours, {e['point']}")
        ax.axvline(0.0126, color="grey", lw=0.8, ls="--", label="published 0.0126 bpp")
        ax.axvline(0.006, color="green", lw=0.8, ls="--", label="target 0.006 bpp")
        ax.set_xlabel("bits per pixel (sketch only)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Sketch coder ({kind.value}) on Kodak: rate vs fidelity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")

"""Figures the notebooks show, each written to a fixed file name."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files; no display is needed (or present in CI)
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

PIPELINE_LABELS = {"en": "standard\n(English forced)", "auto": "paper's\n(language detected)"}


def save(fig: plt.Figure, path: str | Path) -> Path:
    """Write `fig` as a PNG at `path` (parents created) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_baseline(summary: pd.DataFrame, path: str | Path) -> Path:
    """Dense WER with 95% intervals per decoding pipeline, and its error types.

    `summary` has one row per pipeline with columns language, wer, wer_ci95, sub_rate,
    ins_rate, del_rate, n, model, dataset.
    """
    labels = [PIPELINE_LABELS.get(lang, lang) for lang in summary["language"]]
    fig, (ax_wer, ax_types) = plt.subplots(1, 2, figsize=(10, 4))
    lows = [row.wer - row.wer_ci95[0] for row in summary.itertuples()]
    highs = [row.wer_ci95[1] - row.wer for row in summary.itertuples()]
    bars = ax_wer.bar(labels, summary["wer"], yerr=[lows, highs], capsize=6, color=["#4c72b0", "#dd8452"][: len(summary)])
    for bar, wer in zip(bars, summary["wer"]):
        ax_wer.annotate(f"{wer:.2f}", (bar.get_x() + bar.get_width() / 2, 0), xytext=(0, 4),
                        textcoords="offset points", ha="center", color="white", fontweight="bold")
    ax_wer.set_ylabel("WER (%)")
    ax_wer.set_title("WER, 95% bootstrap interval")

    bottom = pd.Series(0.0, index=summary.index)
    for column, name, colour in [("sub_rate", "substitutions", "#8172b2"), ("del_rate", "deletions", "#64b5cd"),
                                 ("ins_rate", "insertions", "#c44e52")]:
        ax_types.bar(labels, summary[column], bottom=bottom, label=name, color=colour)
        bottom += summary[column]
    ax_types.set_ylabel("errors per 100 reference words")
    ax_types.set_title("error types")
    ax_types.legend(frameon=False)
    first = summary.iloc[0]
    fig.suptitle(f"{first['model']} on {first['dataset']} (n = {int(first['n'])} utterances), dense, greedy")
    fig.tight_layout()
    return save(fig, path)

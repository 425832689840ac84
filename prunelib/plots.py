"""Figures the notebooks show, each written to a fixed file name."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files; no display is needed (or present in CI)
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from prunelib.handoff import NOT_RECORDED  # noqa: E402

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
    lows = [max(0.0, row.wer - row.wer_ci95[0]) for row in summary.itertuples()]
    highs = [max(0.0, row.wer_ci95[1] - row.wer) for row in summary.itertuples()]
    bars = ax_wer.bar(
        labels, summary["wer"], yerr=[lows, highs], capsize=6, color=["#4c72b0", "#dd8452"][: len(summary)]
    )
    for bar, wer in zip(bars, summary["wer"], strict=True):
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


ABLATION_PANELS = {
    "sub-layers": ["encoder self-attn", "encoder FFN", "decoder self-attn", "decoder cross-attn", "decoder FFN"],
    "layer groups": ["encoder early layers", "encoder middle layers", "encoder late layers", "encoder last 4 layers",
                     "decoder early layers", "decoder middle layers", "decoder late layers"],
    "front-end and embedding": ["encoder conv front-end", "decoder token embedding"],
}


def plot_ablation_curves(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """WER against sparsity per component group, with 95% interval bands and the dense band."""
    dense = table[table["spec"] == "dense"].iloc[0]
    pruned_rows = table[table["spec"] != "dense"]
    panels = {
        name: [c for c in members if c in set(pruned_rows["component"])] for name, members in ABLATION_PANELS.items()
    }
    panels = {name: members for name, members in panels.items() if members}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), sharey=True, squeeze=False)
    top = max(dense["wer_hi"] * 3, 30.0)
    for ax, (name, members) in zip(axes[0], panels.items(), strict=True):
        ax.axhspan(dense["wer_lo"], dense["wer_hi"], color="grey", alpha=0.2, label=f"dense {dense['wer']:.1f}")
        ax.axhline(dense["wer"], color="grey", lw=1)
        for component in members:
            rows = pruned_rows[pruned_rows["component"] == component].sort_values("requested_sparsity")
            x = [0.0, *rows["requested_sparsity"]]
            line, = ax.plot(x, [dense["wer"], *rows["wer"]], marker="o", ms=3, label=component)
            ax.fill_between(x, [dense["wer_lo"], *rows["wer_lo"]], [dense["wer_hi"], *rows["wer_hi"]],
                            color=line.get_color(), alpha=0.12)
        ax.set_yscale("symlog", linthresh=20)
        ax.set_ylim(0, top if pruned_rows["wer"].max() < top else None)
        ax.set_xlabel("sparsity of the pruned component")
        ax.set_title(name)
        ax.legend(fontsize=7, frameon=False)
    axes[0][0].set_ylabel("WER (%), symlog above 20")
    fig.suptitle(title or f"one-shot magnitude pruning, one component at a time (n = {int(dense['n'])} utterances)")
    fig.tight_layout()
    return save(fig, path)


def plot_ablation_heatmap(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Change in WER against dense per component and sparsity; * marks intervals excluding zero."""
    from matplotlib.colors import SymLogNorm

    pruned_rows = table[table["spec"] != "dense"]
    order = [c for members in ABLATION_PANELS.values() for c in members if c in set(pruned_rows["component"])]
    order += [c for c in pruned_rows["component"].unique() if c not in order]
    delta = pruned_rows.pivot_table(index="component", columns="requested_sparsity", values="delta_wer").reindex(order)
    lo = pruned_rows.pivot_table(index="component", columns="requested_sparsity", values="delta_lo").reindex(order)
    hi = pruned_rows.pivot_table(index="component", columns="requested_sparsity", values="delta_hi").reindex(order)
    limit = max(1.0, float(delta.abs().max().max()))
    fig, ax = plt.subplots(figsize=(1.3 * delta.shape[1] + 4, 0.42 * delta.shape[0] + 1.5))
    image = ax.imshow(
        delta.to_numpy(), cmap="RdBu_r", norm=SymLogNorm(linthresh=1.0, vmin=-limit, vmax=limit), aspect="auto"
    )
    for i in range(delta.shape[0]):
        for j in range(delta.shape[1]):
            value = delta.iat[i, j]
            if pd.isna(value):
                continue
            significant = lo.iat[i, j] > 0 or hi.iat[i, j] < 0
            ax.text(j, i, f"{value:+.1f}{'*' if significant else ''}", ha="center", va="center", fontsize=8,
                    color="white" if abs(value) > limit / 3 else "black")
    ax.set_xticks(range(delta.shape[1]), [f"{s:.0%}" for s in delta.columns])
    ax.set_yticks(range(delta.shape[0]), delta.index)
    ax.set_xlabel("sparsity of the pruned component")
    fig.colorbar(image, ax=ax, label="WER change vs dense (points, symlog)")
    n = int(pruned_rows["n"].iloc[0])
    ax.set_title(title or f"WER change vs dense (n = {n}); * = paired 95% interval excludes 0")
    fig.tight_layout()
    return save(fig, path)


SENSITIVITY_UNITS = {  # colour-bar label per score: what is averaged over a component's weights, and its unit
    "gradient": "|mean dL/dw| (nats / unit weight)",
    "fisher": "mean (dL/dw)^2 (nats^2 / unit weight^2)",
    "taylor": "|w mean dL/dw| (nats)",
    "obd": "0.5 F w^2 (nats)",
}


def plot_sensitivity_heatmap(components: pd.DataFrame, score: str, path: str | Path, title: str) -> Path:
    """Layer x component-kind heatmaps of one score, encoder and decoder side by side (log colour scale).

    `components` has one row per component with columns stack, layer, kind and `score`;
    rows outside the layers' self_attn / cross_attn / ffn are ignored.
    """
    import numpy as np

    kinds = {"encoder": ["self_attn", "ffn"], "decoder": ["self_attn", "cross_attn", "ffn"]}
    rows = components[components["kind"].isin(kinds["decoder"]) & components["layer"].notna()]
    grids = {stack: rows[rows["stack"] == stack].pivot(index="layer", columns="kind", values=score)
             .reindex(columns=columns) for stack, columns in kinds.items()}
    values = np.log10(pd.concat(grids.values(), axis=1).to_numpy(dtype=float))
    low, high = np.nanmin(values), np.nanmax(values)
    fig, axes = plt.subplots(1, 2, figsize=(9, 1.6 + 0.45 * max(len(g) for g in grids.values())),
                             gridspec_kw={"width_ratios": [2, 3]}, layout="constrained")
    for ax, (stack, grid) in zip(axes, grids.items(), strict=True):
        logs = np.log10(grid.to_numpy(dtype=float))
        image = ax.imshow(logs, cmap="viridis", vmin=low, vmax=high, aspect="auto")
        for (i, j), value in np.ndenumerate(grid.to_numpy(dtype=float)):
            shade = "white" if logs[i, j] < (low + high) / 2 else "black"
            ax.text(j, i, f"{value:.1e}", ha="center", va="center", fontsize=7, color=shade)
        ax.set_xticks(range(len(grid.columns)), [c.replace("_", " ") for c in grid.columns])
        ax.set_yticks(range(len(grid.index)), [str(int(layer)) for layer in grid.index])
        ax.set_xlabel("component kind")
        ax.set_ylabel(f"{stack} layer")
        ax.set_title(stack)
    fig.colorbar(image, ax=axes, label=f"log10 {score}, mean over weights of\n{SENSITIVITY_UNITS.get(score, score)}")
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def plot_sensitivity_stability(stability: pd.DataFrame, path: str | Path, threshold: float = 0.9) -> Path:
    """Spearman agreement with the full calibration pool against calibration size, per score.

    `stability` has columns labels, method, seed, size, reference_size, spearman (one panel per labels).
    """
    label_choices = list(dict.fromkeys(stability["labels"]))
    fig, axes = plt.subplots(1, len(label_choices), figsize=(4.5 * len(label_choices), 3.6), squeeze=False,
                             sharey=True)
    for ax, labels in zip(axes[0], label_choices, strict=True):
        block = stability[stability["labels"] == labels]
        for method, rows in block.groupby("method", sort=False):
            worst = rows.groupby("size")["spearman"].min()
            line, = ax.plot(worst.index, worst.to_numpy(), marker="o", label=f"{method} (worst seed)")
            ax.scatter(rows["size"], rows["spearman"], color=line.get_color(), alpha=0.35, s=14)
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log", base=2)
        sizes = sorted(block["size"].unique())
        ax.set_xticks(sizes, [str(int(size)) for size in sizes])
        ax.minorticks_off()
        ax.set_xlabel("calibration utterances (n, log scale)")
        ax.set_title(f"{labels} labels; reference n = {int(block['reference_size'].max())}")
    axes[0][0].set_ylabel("Spearman rho over components\n(vs. the full pool)")
    axes[0][0].legend(frameon=False, fontsize=8)
    fig.suptitle("How many calibration utterances give a stable component ranking? (dots: seeds)", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def plot_allocator_curves(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """WER against achieved overall sparsity per allocator, 95% interval bands, symlog WER axis.

    `table` has one row per evaluation with columns allocator, sparsity_linear (percent), wer,
    wer_lo, wer_hi, n; the row with allocator "dense" draws the baseline band. An allocator
    with a single row (the paper's fixed table) is drawn as one point with its interval.
    """
    dense = table[table["allocator"] == "dense"].iloc[0]
    rows = table[table["allocator"] != "dense"]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.axhspan(dense["wer_lo"], dense["wer_hi"], color="grey", alpha=0.2, label=f"dense {dense['wer']:.1f}")
    ax.axhline(dense["wer"], color="grey", lw=1)
    colours = plt.get_cmap("tab20").colors  # ten defaults would repeat among eleven allocators
    for index, (allocator, block) in enumerate(rows.groupby("allocator", sort=False)):
        block, colour = block.sort_values("sparsity_linear"), colours[(2 * index) % 20 + (2 * index) // 20]
        if len(block) == 1:
            point = block.iloc[0]
            ax.errorbar(point["sparsity_linear"], point["wer"], yerr=[[point["wer"] - point["wer_lo"]],
                        [point["wer_hi"] - point["wer"]]], fmt="*", ms=12, capsize=4, label=allocator, color=colour)
            continue
        x = [0.0, *block["sparsity_linear"]]
        ax.plot(x, [dense["wer"], *block["wer"]], marker="o", ms=4, label=allocator, color=colour)
        ax.fill_between(x, [dense["wer_lo"], *block["wer_lo"]], [dense["wer_hi"], *block["wer_hi"]],
                        color=colour, alpha=0.12)
    ax.set_yscale("symlog", linthresh=20)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("overall sparsity over the prunable linear weights (%)")
    ax.set_ylabel("WER (%), symlog above 20")
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(title or f"allocators at matched overall sparsity (n = {int(dense['n'])} utterances)")
    fig.tight_layout()
    return save(fig, path)


def plot_damage_curves(curves: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Each group's measured WER change against its sparsity (one panel per stack), as `empirical` reads them."""
    stacks = list(dict.fromkeys(curves["component"].str.split(" ").str[0]))
    fig, axes = plt.subplots(1, len(stacks), figsize=(5.5 * len(stacks), 4), sharey=True, squeeze=False)
    for ax, stack in zip(axes[0], stacks, strict=True):
        for label, block in curves[curves["component"].str.startswith(stack)].groupby("component", sort=False):
            block = block.sort_values("sparsity")
            ax.plot([0.0, *(100 * block["sparsity"])], [0.0, *block["damage"]], marker="o", ms=3,
                    label=label[len(stack) + 1:])
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("sparsity of the group alone (%)")
        ax.set_title(stack)
        ax.legend(fontsize=7, frameon=False)
    axes[0][0].set_ylabel("WER change on calibration utterances (points)")
    axes[0][0].set_yscale("symlog", linthresh=10)
    fig.suptitle(title or "measured damage of each group pruned alone", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def plot_allocation_heatmap(sparsity: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Sparsity each allocator gave each component: rows components, columns allocators, in percent.

    `sparsity` is a components x allocators frame of fractions; NaN (never pruned) shows blank.
    """
    import numpy as np

    values = sparsity.to_numpy(dtype=float) * 100
    fig, ax = plt.subplots(figsize=(1.1 * sparsity.shape[1] + 3.5, 0.3 * sparsity.shape[0] + 1.8))
    image = ax.imshow(values, cmap="magma_r", vmin=0, vmax=100, aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if value > 55 else "black")
    ax.set_xticks(range(sparsity.shape[1]), sparsity.columns, rotation=35, ha="right")
    ax.set_yticks(range(sparsity.shape[0]), sparsity.index, fontsize=8)
    fig.colorbar(image, ax=ax, label="sparsity of the component (%)")
    ax.set_title(title or "per-component sparsity chosen by each allocator")
    fig.tight_layout()
    return save(fig, path)


def plot_cross_dataset(table: pd.DataFrame, path: str | Path) -> Path:
    """WER change against dense per corpus and pruned system, with paired 95% intervals, per pipeline."""
    pruned_rows = table[table["system"] != "dense"]
    languages = list(dict.fromkeys(pruned_rows["language"]))
    systems = list(dict.fromkeys(pruned_rows["system"]))
    datasets = list(dict.fromkeys(pruned_rows["dataset"]))
    fig, axes = plt.subplots(1, len(languages), figsize=(1.8 * len(datasets) * len(languages) + 3, 4.4),
                             sharey=True, squeeze=False)
    width = 0.8 / max(1, len(systems))
    for ax, language in zip(axes[0], languages, strict=True):
        rows = pruned_rows[pruned_rows["language"] == language]
        for k, system in enumerate(systems):
            part = rows[rows["system"] == system].set_index("dataset").reindex(datasets)
            x = [i - 0.4 + width * (k + 0.5) for i in range(len(datasets))]
            # A percentile interval need not contain the point estimate on tiny samples: clip at 0.
            yerr = [
                (part["delta_wer"] - part["delta_lo"]).clip(lower=0),
                (part["delta_hi"] - part["delta_wer"]).clip(lower=0),
            ]
            ax.errorbar(x, part["delta_wer"], yerr=yerr, fmt="o", capsize=4, label=system)
        ax.axhline(0, color="grey", lw=1)
        ax.set_yscale("symlog", linthresh=5)
        # Signed plain numbers read better than the symlog default of "10^0" and "-10^1" for points of WER.
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:+g}" if value else "0"))
        dense = table[(table["system"] == "dense") & (table["language"] == language)].set_index("dataset")
        # The dense WER under each corpus: a change of +5 points means little on a corpus already at 60.
        labels = [f"{d}\nn = {int(rows[rows['dataset'] == d]['n'].iloc[0])}"
                  + (f", dense {dense.loc[d, 'wer']:.1f}" if d in dense.index else "") for d in datasets]
        ax.set_xticks(range(len(datasets)), labels, fontsize=8)
        ax.set_title(f"pipeline '{language}'")
    axes[0][0].set_ylabel("WER change vs dense (points, symlog above 5)")
    axes[0][-1].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle("do the effects of pruning carry to other speech? (paired 95% intervals)")
    fig.tight_layout()
    return save(fig, path)


def plot_size_trend(table: pd.DataFrame, paper_model: str, path: str | Path, title: str = "") -> Path:
    """Each headline effect's paired WER change per model size, the paper's whisper-small number as a star.

    `table` is `sizes.size_table`'s: models in the order given (smallest first); rows not measured
    leave a gap. The paper's point is drawn only where the paper states a number at that level.
    Rows of a run that left no stamped notebook (`handoff.NOT_RECORDED`) are drawn hollow.
    """
    effects = list(dict.fromkeys(table["effect"]))
    models = list(dict.fromkeys(table["model"]))
    if paper_model not in models:
        models.append(paper_model)
    fig, axes = plt.subplots(1, len(effects), figsize=(2.6 * len(effects) + 1, 4.2), sharey=True, squeeze=False)
    for ax, effect in zip(axes[0], effects, strict=True):
        rows = table[(table["effect"] == effect) & (table["status"] == "measured")]
        x = [models.index(m) for m in rows["model"]]
        yerr = [(rows["delta_wer"] - rows["delta_lo"]).clip(lower=0),
                (rows["delta_hi"] - rows["delta_wer"]).clip(lower=0)]
        ax.errorbar(x, rows["delta_wer"], yerr=yerr, fmt="o-", capsize=4, color="#4c72b0", label="ours (95% interval)")
        unrecorded = rows["run"] == NOT_RECORDED if "run" in rows else pd.Series(False, index=rows.index)
        if unrecorded.any():  # an earlier run's numbers: hollow, so that they are not read as this code's
            ax.plot([models.index(m) for m in rows.loc[unrecorded, "model"]], rows.loc[unrecorded, "delta_wer"],
                    "o", ls="none", ms=7, mfc="white", mec="#4c72b0", mew=1.5, zorder=5,
                    label="from a run with no stamped notebook")
        for xi, row in zip(x, rows.itertuples(), strict=True):
            if row.kind == "allocation":  # which allocator was best differs between sizes
                ax.annotate(row.method, (xi, row.delta_wer), xytext=(4, 4), textcoords="offset points", fontsize=7)
        paper = table.loc[table["effect"] == effect, "paper_change"].dropna()
        if len(paper):
            ax.plot([models.index(paper_model)], [paper.iloc[0]], marker="*", ms=14, ls="none", color="#c44e52",
                    label="paper (whisper-small)")
        ax.axhline(0, color="grey", lw=1)
        ax.set_yscale("symlog", linthresh=5)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:+g}" if value else "0"))
        ax.set_xticks(range(len(models)), [m.rsplit("/", 1)[-1] for m in models], rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.5, len(models) - 0.5)
        ax.set_title(effect, fontsize=9)
    axes[0][0].set_ylabel("WER change vs the same size's dense model\n(points, symlog above 5)")
    # one legend for every panel's marks: the hollow mark may appear in any of them
    handles = {label: handle for ax in axes[0] for handle, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    axes[0][-1].legend(handles.values(), handles.keys(), fontsize=7, frameon=False, loc="upper left",
                       bbox_to_anchor=(1.01, 1))
    fig.suptitle(title or "do the paper's effects move with model size? (paired 95% intervals)", fontsize=10)
    fig.tight_layout()
    return save(fig, path)

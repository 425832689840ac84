"""How far to trust a ranking of components: rank correlations, and stability over sizes and seeds."""
from __future__ import annotations

import pandas as pd
from scipy.stats import spearmanr

from prunelib.gradients import METHODS
from prunelib.sensitivity import prunable_rows


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman rank correlation of two score series over their shared index."""
    shared = a.index.intersection(b.index)
    return float(spearmanr(a[shared].to_numpy(), b[shared].to_numpy()).statistic)



def rank_agreement(columns: dict[str, pd.Series]) -> pd.DataFrame:
    """Symmetric matrix of pairwise Spearman correlations between named score series."""
    names = list(columns)
    matrix = pd.DataFrame(1.0, index=names, columns=names)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            matrix.loc[a, b] = matrix.loc[b, a] = spearman(columns[a], columns[b])
    return matrix


def stability_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Spearman over linear components of every (labels, seed, size) run against its label's largest run."""
    linear = prunable_rows(scores)
    rows = []
    for labels, runs in linear.groupby("labels", sort=False):
        largest = runs["size"].max()
        reference = runs[runs["size"] == largest].drop_duplicates("component").set_index("component")
        for (seed, size), run in runs.groupby(["seed", "size"], sort=True):
            if size == largest:
                continue  # the reference itself (the full pool scores the same in any order)
            run = run.set_index("component")
            for method in METHODS:
                rows.append({"labels": labels, "method": method, "seed": seed, "size": size, "reference_size": largest,
                             "spearman": spearman(run[method], reference[method])})
    return pd.DataFrame(rows)


def stable_from(stability: pd.DataFrame, threshold: float = 0.9) -> pd.DataFrame:
    """Per labels x method: the worst Spearman over seeds at each size, and the smallest size
    from which every size and seed reaches `threshold`."""
    worst = stability.groupby(["labels", "method", "size"])["spearman"].min().unstack("size")
    below = worst.lt(threshold)
    sizes = list(worst.columns)

    def first_stable(row: pd.Series) -> int | None:
        """Smallest size with no later size below the threshold."""
        for i, size in enumerate(sizes):
            if not row.iloc[i:].any():
                return int(size)
        return None

    worst.columns = [f"min rho @ {size}" for size in sizes]
    worst[f"stable from (rho >= {threshold})"] = below.apply(first_stable, axis=1).astype("Int64")
    return worst.reset_index()


def label_agreement(scores: pd.DataFrame, label_choices: list[str], seed: int) -> list[dict]:
    """Spearman, per score, between the first two label choices' rankings on the whole pool (none with one choice)."""
    if len(label_choices) < 2:
        return []
    pool_size = int(scores["size"].max())
    full = prunable_rows(scores[(scores["size"] == pool_size) & (scores["seed"] == seed)])
    a, b = label_choices[:2]
    left = full[full["labels"] == a].set_index("component")
    right = full[full["labels"] == b].set_index("component")
    return [{"comparison": f"labels {a} vs {b}", "method": method, "n": pool_size,
             "spearman": spearman(left[method], right[method])} for method in METHODS]


def corpus_agreement(other: pd.DataFrame, main: pd.DataFrame, comparison: str) -> list[dict]:
    """Spearman, per score, between rankings calibrated on another corpus and on the main one."""
    theirs = prunable_rows(other).set_index("component")
    ours = prunable_rows(main).set_index("component")
    return [{"comparison": comparison, "method": method, "n": int(other["size"].max()),
             "spearman": spearman(theirs[method], ours[method])} for method in METHODS]


def method_pairs(agreement: pd.DataFrame, n: int) -> list[dict]:
    """The upper triangle of a `rank_agreement` matrix as rows (comparison "a vs b", method "methods")."""
    names = list(agreement.index)
    return [{"comparison": f"{a} vs {b}", "method": "methods", "n": n, "spearman": agreement.loc[a, b]}
            for i, a in enumerate(names) for b in names[i + 1:]]

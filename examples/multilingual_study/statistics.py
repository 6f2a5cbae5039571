"""Summaries of a study's runs: means over seeds, paired differences, breakdowns.

A seed's score on a set of cells is the mean of those cells' accuracies, so
every (language, task) cell weighs the same. Spreads are over seeds: the
sample standard deviation (ddof=1) of the per-seed scores; with one seed
there is no spread and it is reported as None.
"""

import numpy as np

from keras_flix.datasets import cldr_multitask

KINDS = cldr_multitask.KINDS


def _std(values):
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def seed_scores(runs, method, select=lambda cell: True):
    """Per seed, the mean accuracy over `method`'s cells that `select` keeps."""
    scores = {}
    for run in runs:
        if run["settings"]["method"] != method:
            continue
        values = [c["accuracy"] for c in run["cells"] if select(c)]
        if values:
            scores[run["settings"]["seed"]] = float(np.mean(values))
    return scores


def by_kind(kind):
    return lambda cell: cell["split"] == kind


def summarize(runs, methods):
    """method -> split kind -> {"mean", "std", "seeds"}."""
    summary = {}
    for method in methods:
        for kind in KINDS:
            scores = list(seed_scores(runs, method, by_kind(kind)).values())
            if scores:
                summary.setdefault(method, {})[kind] = {
                    "mean": float(np.mean(scores)),
                    "std": _std(scores),
                    "seeds": len(scores),
                }
    return summary


def paired_difference(runs, method, baseline, select):
    """`method - baseline` per seed (both trained on the same data order).

    Returns:
        dict with the mean and std of the per-seed differences, the seeds
        used, and `beyond_two_std`: whether |mean| > 2 std (None with fewer
        than 2 seeds).
    """
    a = seed_scores(runs, method, select)
    b = seed_scores(runs, baseline, select)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    differences = [a[s] - b[s] for s in seeds]
    mean, std = float(np.mean(differences)), _std(differences)
    return {
        "mean": mean,
        "std": std,
        "seeds": seeds,
        "beyond_two_std": None if std is None else bool(abs(mean) > 2 * std),
    }


def paired_differences(runs, method, baselines):
    """baseline -> split kind -> `paired_difference` of `method` against it."""
    return {
        baseline: {
            kind: paired_difference(runs, method, baseline, by_kind(kind))
            for kind in KINDS
        }
        for baseline in baselines
    }


def breakdown(runs, methods, scripts):
    """Mean over seeds per split kind, by script group and by task.

    Args:
        scripts: language code -> ISO 15924 script code.

    Returns:
        {"script": {group: {method: {kind: mean}}}, "task": {...}} with
        groups "Latin" / "non-Latin" and the task names.
    """
    groups = {
        "script": {
            "Latin": lambda c: scripts[c["language"]] == "Latn",
            "non-Latin": lambda c: scripts[c["language"]] != "Latn",
        },
        "task": {t: (lambda c, t=t: c["task"] == t) for t in cldr_multitask.TASKS},
    }
    result = {}
    for axis, selectors in groups.items():
        for group, select in selectors.items():
            for method in methods:
                for kind in KINDS:
                    scores = seed_scores(
                        runs, method, lambda c: select(c) and by_kind(kind)(c)
                    )
                    if scores:
                        result.setdefault(axis, {}).setdefault(group, {}).setdefault(
                            method, {}
                        )[kind] = float(np.mean(list(scores.values())))
    return result


def best_baseline(summary, baselines):
    """The baseline with the highest mean over its split kinds' means."""
    present = [b for b in baselines if b in summary]
    if not present:
        return None
    return max(
        present, key=lambda b: np.mean([s["mean"] for s in summary[b].values()])
    )


def cell_differences(runs, method, baseline, languages, tasks):
    """`method - baseline` per (language, task) cell, mean over seeds."""
    means = {}
    for run in runs:
        name = run["settings"]["method"]
        if name in (method, baseline):
            for c in run["cells"]:
                means.setdefault((name, c["language"], c["task"]), []).append(
                    c["accuracy"]
                )
    difference = np.full((len(languages), len(tasks)), np.nan)
    for i, language in enumerate(languages):
        for j, task in enumerate(tasks):
            a = means.get((method, language, task))
            b = means.get((baseline, language, task))
            if a and b:
                difference[i, j] = np.mean(a) - np.mean(b)
    return difference

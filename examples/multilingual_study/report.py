"""report.md, heatmap.png and learning_curves.png of a study."""

import json

import numpy as np

from keras_flix.datasets import cldr_multitask


KINDS = cldr_multitask.KINDS
MEANING = """\
`supervised` cells test concepts never trained in any language (the split is
by concept), in trained (language, task) pairs. `heldout_combination` cells
pair a trained language with a task it was never trained on: FLix composes
the language's and the task's adapters; LoRA relies on its one shared
adapter and the task named in the text. `unseen_language` cells (ka, sw, uk)
have no training data at all; FLix runs them with the language feature
absent, so only the task adapter acts."""


PARAMETER_KEYS = (
    "trainable", "adapters", "active_adapters_per_example", "head", "other_trainable",
)


def _seconds(value):
    return "–" if value is None else f"{value:.2f}"


def _points(value):
    return "–" if value is None else f"{100 * value:.1f}"


def _mean_std(entry):
    if entry is None:
        return "–"
    std = "" if entry["std"] is None else f" ± {100 * entry['std']:.1f}"
    return f"{100 * entry['mean']:.1f}{std}"


def _signed(entry):
    if entry is None:
        return "–"
    std = "" if entry["std"] is None else f" ± {100 * entry['std']:.1f}"
    mark = " **(> 2 std)**" if entry["beyond_two_std"] else ""
    return f"{100 * entry['mean']:+.1f}{std}{mark}"


def markdown_table(header, rows):
    """A Markdown table from a header row and rows of cells."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary_table(summary, titles, methods):
    return markdown_table(
        ["method", *KINDS],
        [
            [titles[m]] + [_mean_std(summary[m].get(k)) for k in KINDS]
            for m in methods
            if m in summary
        ],
    )


def paired_table(paired, titles, method):
    return markdown_table(
        [f"{titles[method]} −", *KINDS],
        [
            [titles[baseline]] + [_signed(by_kind.get(k)) for k in KINDS]
            for baseline, by_kind in paired.items()
        ],
    )


def breakdown_table(breakdown, axis, titles, methods):
    return markdown_table(
        [axis, "method", *KINDS],
        [
            [group, titles[m]] + [_points(by_method[m].get(k)) for k in KINDS]
            for group, by_method in breakdown.get(axis, {}).items()
            for m in methods
            if m in by_method
        ],
    )


def write_report(path, results, titles):
    config, summary = results["config"], results["summary"]
    methods = config["methods"]
    lines = [
        "# FLix vs. LoRA on CLDR multilingual x multitask",
        "",
        f"Backbone {config['backbone']}; backend {config['backend']}; "
        f"{config['steps']} steps of {config['batch_size']} "
        f"({config['epochs']:.2f} epochs of the training mixture); "
        f"{config['seeds']} seed(s); evaluated on the `{config['eval_split']}` "
        f"split, at most {config['test_per_cell'] or 'all'} examples per cell.",
        "",
        "Accuracy (%, mean ± std over seeds; a seed's score is the mean over "
        "its (language, task) cells):",
        "",
        summary_table(summary, titles, methods),
        "",
    ]
    for method, paired in results.get("paired_differences", {}).items():
        lines += [
            f"Paired per-seed difference, {titles[method]} − baseline (points, "
            "mean ± std over seeds; **> 2 std** marks a difference beyond two "
            "standard deviations of the paired difference):",
            "",
            paired_table(paired, titles, method),
            "",
        ]
    if results.get("best_baseline") and "flix" in methods:
        lines += [
            f"Best baseline (highest mean over the split kinds): "
            f"{titles[results['best_baseline']]}; `heatmap.png` shows FLix − it per cell.",
            "",
        ]
    lines += [MEANING, ""]
    breakdown = results.get("breakdown", {})
    for axis in ("script", "task"):
        if axis in breakdown:
            lines += [
                f"## By {axis} (accuracy %, mean over seeds)",
                "",
                breakdown_table(breakdown, axis, titles, methods),
                "",
            ]
    lines += [
        "## Learning rates",
        "",
        "Learning rates are chosen on the dev split only"
        + (
            f"; this study ran the grid {config['lr_grid']} on dev and kept each "
            "method's best."
            if config["lr_grid"]
            else "; this study ran no grid: the last column says where each came from."
        ),
        "",
        markdown_table(
            ["method", "peak learning rate", "how it was set"],
            [
                [titles[m], f"{lr:g}", config["lr_source"][m]]
                for m, lr in config["lr"].items()
            ],
        ),
        "",
        "## Runs",
        "",
        markdown_table(
            ["method", "lr", "seed", "final training loss", "median step (s)", "wall (s)"],
            [
                [
                    titles[run["settings"]["method"]],
                    f"{run['settings']['lr']:g}",
                    str(run["settings"]["seed"]),
                    f"{run['loss']:.3f}",
                    _seconds(run["step_seconds_median"]),
                    f"{run['seconds']:.0f}",
                ]
                for run in results["runs"]
            ],
        ),
        "",
        "## Trainable parameters",
        "",
        markdown_table(
            ["method", "trainable", "adapters (all)", "adapters active per example",
             "head", "other"],
            [
                [titles[m]] + [f"{c[key]:,}" for key in PARAMETER_KEYS]
                for m, c in config["parameters"].items()
            ],
        ),
    ]
    lines += [
        "",
        "KerasHub's `enable_lora` factors each query/value kernel "
        "`[hidden, heads, head_dim]` per head and leaves the projections' "
        'biases trainable ("other"); the FLix family adapts the flattened '
        "`[hidden, hidden]` kernel.",
        "",
        "## Settings",
        "",
        "```json",
        json.dumps({k: v for k, v in config.items() if k != "parameters"}, indent=1),
        "```",
        "",
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_heatmap(difference, languages, title, path):
    """A method − baseline per cell; held-out cells boxed, unseen hatched."""
    plt = _pyplot()
    tasks = cldr_multitask.TASKS
    difference = 100 * difference
    # Symmetric colour scale, at least ±5 points so that noise looks pale.
    limit = max(5.0, float(np.abs(difference[np.isfinite(difference)]).max(initial=0)))
    fig, ax = plt.subplots(figsize=(6.5, 0.26 * len(languages) + 1.8))
    image = ax.imshow(difference, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    heldout = set(cldr_multitask.HELDOUT_CELLS)
    for i, language in enumerate(languages):
        for j, task in enumerate(tasks):
            if np.isfinite(difference[i, j]):
                ax.text(j, i, f"{difference[i, j]:+.0f}", ha="center", va="center", fontsize=7)
            box = dict(fill=False, linewidth=1.8, edgecolor="black")
            if (language, task) in heldout:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, **box))
            if language in cldr_multitask.UNSEEN_LANGUAGES:
                ax.add_patch(
                    plt.Rectangle(
                        (j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///",
                        edgecolor="gray", linewidth=0,
                    )
                )
    ax.set_xticks(range(len(tasks)), tasks, rotation=20, fontsize=8)
    ax.set_yticks(
        range(len(languages)),
        [f"{c} *" if c in cldr_multitask.UNSEEN_LANGUAGES else c for c in languages],
        fontsize=8,
    )
    ax.set_title(
        f"{title} (points, mean over seeds)\n"
        "boxed: held-out combination; hatched, *: unseen language",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_learning_curves(runs, titles, path):
    """Dev-subset accuracy against steps: a colour per method and rate, a line style per seed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    series = list(dict.fromkeys((r["settings"]["method"], r["settings"]["lr"]) for r in runs))
    colours = plt.get_cmap("tab10")
    seed_styles = ["-", "--", ":", "-."]
    labelled = set()
    for run in runs:
        if run["dev_curve"]:
            s = run["settings"]
            key = (s["method"], s["lr"])
            steps, accuracy = zip(*run["dev_curve"])
            ax.plot(
                steps,
                100 * np.array(accuracy),
                color=colours(series.index(key) % colours.N),
                linestyle=seed_styles[s["seed"] % len(seed_styles)],
                label=None if key in labelled else f"{titles[s['method']]} (lr {s['lr']:g})",
                marker=".",
            )
            labelled.add(key)
    ax.set_xlabel("training step")
    ax.set_ylabel("dev accuracy (%, subset)")
    ax.set_title(
        "Learning curves (seed 0 solid, 1 dashed, 2 dotted, 3 dash-dot)", fontsize=9
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

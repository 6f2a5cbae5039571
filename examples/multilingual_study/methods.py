"""The compared methods: how each adapts the backbone, and its parameters.

Every FLix-family method (`lora`, `lora_wide`, `flix`, ...) is built by
`keras_flix.retrofit` on the same layers with the same factorization (one
`A [d_in, r]`, `B [r, d_out]` pair per feature value over the flattened
kernel), the same initialization and the same scaling convention; they
differ only in their feature schema, ranks and feature dropout. `lora` is a
FLix layer with one feature that every example has: exactly a plain LoRA
(PEFT's). `kerashub_lora` is KerasHub's own `enable_lora`, which factors the
query / value kernels per head; it is the ecosystem reference.

Scaling: every adapter uses `s = ALPHA / r` with the same fixed `ALPHA` for
every method and feature type (the LoRA paper's convention: with Adam, a
rank change then leaves the size of a step in `B A` unchanged, so learning
rates transfer between ranks), times a per-feature-type factor: FLix's
language adapters take `LANGUAGE_STEP` of it.
"""

import dataclasses
import re

import numpy as np

import keras_flix as kf

ALPHA = 8.0
# FLix's language adapters' step relative to every other adapter's (a factor
# on ALPHA). Each language row gets a gradient from one or two examples of a
# batch of 32 over 27 languages, and Adam makes a full-size step of that
# noise. Chosen on dev at one epoch and lr 3e-3, from {1, 1/4}: 58.4 % at
# 1/4 against 28.3 % at 1 (README, "The main job").
LANGUAGE_STEP = 0.25
# The feature that every example of `lora` has (one adapter for all).
SHARED = "shared"


@dataclasses.dataclass(frozen=True)
class Method:
    """One way to adapt the backbone.

    Attributes:
        name: the id used on the command line and in results.json.
        title: for tables.
        ranks: feature type -> rank (the FLix family), or None for
            `kerashub_lora` (rank `kerashub_rank`) and `head_only` (no
            adapters: a linear probe of the frozen backbone).
        dropout: feature dropout (FLix family only).
        kerashub_rank: the rank of KerasHub's `enable_lora`.
        alpha_scale: feature type -> factor on ALPHA (default 1). With Adam
            the size of a step in `B A` is proportional to the scale, so this
            is a per-feature-type learning rate.
    """

    name: str
    title: str
    ranks: dict = None
    dropout: float = 0.0
    kerashub_rank: int = 0
    alpha_scale: dict = dataclasses.field(default_factory=dict)

    @property
    def alphas(self):
        return {t: ALPHA * self.alpha_scale.get(t, 1.0) for t in self.feature_types}

    @property
    def feature_types(self):
        return tuple(self.ranks or ())


def methods(rank, dropout, languages, tasks, language_step=LANGUAGE_STEP):
    """Every method of the study, by name.

    Args:
        rank: the active rank per example (FLix splits it between language
            and task).
        dropout: FLix's feature dropout.
        language_step: the language adapters' factor on ALPHA.
        languages, tasks: the trained feature values (they fix `lora_wide`'s
            rank: the one that matches FLix's total adapter parameters).

    Returns:
        dict: name -> `Method`, the baselines first.
    """
    half = rank // 2
    flix_ranks = {"language": half, "task": half}
    slow_language = {"language": language_step}
    total_rank = half * (len(languages) + len(tasks))
    return {
        m.name: m
        for m in (
            Method("lora", "LoRA (rank-matched)", {SHARED: rank}),
            Method("lora_wide", "LoRA (parameter-matched)", {SHARED: total_rank}),
            Method("kerashub_lora", "KerasHub enable_lora", kerashub_rank=rank),
            Method("flix", "FLix", flix_ranks, dropout, alpha_scale=slow_language),
            Method(
                "flix_no_dropout",
                "FLix, no feature dropout",
                flix_ranks,
                alpha_scale=slow_language,
            ),
            # Ablations (see README): the language step, the rank split,
            # the language feature, a shared always-on feature.
            Method(
                "flix_full_language_step",
                "FLix, full language step",
                flix_ranks,
                dropout,
            ),
            Method(
                "flix_lang_heavy",
                "FLix, language 3/4 of the rank",
                {"language": rank * 3 // 4, "task": rank - rank * 3 // 4},
                dropout,
                alpha_scale=slow_language,
            ),
            Method("flix_task_only", "FLix, task feature only", {"task": rank}, dropout),
            Method(
                "flix_shared",
                "FLix + shared feature",
                {**flix_ranks, SHARED: half},
                dropout,
                alpha_scale=slow_language,
            ),
            # LoRA's whole adapter with FLix's beside it (the paper's FLix + shared).
            Method(
                "flix_shared_full_rank",
                "FLix + shared feature at LoRA's rank",
                {**flix_ranks, SHARED: rank},
                dropout,
                alpha_scale=slow_language,
            ),
            Method("head_only", "Head only (frozen backbone)"),
        )
    }


BASELINES = ("lora", "lora_wide", "kerashub_lora")
# What no adapter can be compared against: the frozen backbone's linear probe.
REFERENCES = ("head_only",)
HEADLINE = ("lora", "flix")
PUBLISHED = ("lora", "lora_wide", "kerashub_lora", "flix", "flix_no_dropout")


def schema_for(method, languages, tasks):
    """The method's feature schema (None without FLix layers)."""
    if method.ranks is None:
        return None
    values = {"language": list(languages), "task": list(tasks), SHARED: ["all"]}
    return kf.FeatureSchema(
        {t: values[t] for t in method.feature_types}, unknown="absent"
    )


def adapt(method, classifier, backbone, schema, seed):
    """Adds `method`'s adapters; only they and the head train.

    Returns:
        The model to train: a `kf.FLixModel`, or `classifier` itself with
        KerasHub's LoRA enabled on `backbone`.
    """
    if method.ranks is None:
        if method.kerashub_rank:
            backbone.enable_lora(method.kerashub_rank)
        else:
            backbone.trainable = False
        return classifier
    return kf.retrofit(
        classifier,
        schema,
        rank=dict(method.ranks),
        alpha=method.alphas,
        target_layers=lora_targets(backbone),
        feature_dropout=method.dropout,
        train_also=["head"],
        seed=seed,
    )


def lora_targets(backbone):
    """One pattern naming the layers KerasHub's `enable_lora` adapts.

    `default_lora_layer_names()` lists names for many architectures (query
    and value projections); one alternation matches whichever exist, so
    every method adapts the same layers.
    """
    return "|".join(re.escape(n) for n in backbone.default_lora_layer_names())


def parameter_counts(model):
    """Trainable parameters: adapters (all, active per example), head, other."""

    def size(variable):
        return int(np.prod(variable.shape))

    flix = isinstance(model, kf.FLixModel)
    classifier = model.base_model if flix else model
    trainable = sum(size(v) for v in model.trainable_weights)
    head = sum(size(v) for v in classifier.get_layer("head").trainable_weights)
    if flix:
        tables = [v for layer in model.flix_layers for v in layer.adapter_variables]
        adapters = sum(size(v) for v in tables)
        # Each example uses one value's A and B per feature type.
        active = sum(size(v) // v.shape[0] for v in tables)
    else:
        adapters = sum(size(v) for v in model.trainable_weights if "lora" in v.path)
        active = adapters
    return {
        "trainable": trainable,
        "adapters": adapters,
        "active_adapters_per_example": active,
        "head": head,
        "other_trainable": trainable - adapters - head,
    }

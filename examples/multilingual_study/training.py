"""One run: build a method's model, train it, evaluate it, record it.

A run is identified by (method, learning rate, seed, evaluated split) and
saved as one JSON file under `<output>/runs/`, so that a long study can be
stopped and started again: finished runs are read back, not redone (a run
whose recorded settings differ from the current ones is redone).
"""

import json
import os
import time

import keras
import numpy as np

import keras_flix as kf

from multilingual_study import data
from multilingual_study import methods as methods_lib

WARMUP_FRACTION = 0.1
# `lazy_adam` updates only the adapter rows a batch used; `adam` moves every
# row at every step (its moments keep moving rows a batch did not use).
OPTIMIZERS = {"lazy_adam": kf.optimizers.LazyAdam, "adam": keras.optimizers.Adam}


class MaskedMeanPooling(keras.layers.Layer):
    """Mean of the token vectors over non-padding positions.

    Both bundled backbones are mean-pooling sentence encoders
    (multilingual-e5-small, all-MiniLM-L6-v2), so this is the sentence
    vector they were trained to produce.
    """

    def call(self, sequence, padding_mask):
        mask = keras.ops.cast(keras.ops.expand_dims(padding_mask, -1), sequence.dtype)
        total = keras.ops.sum(sequence * mask, axis=1)
        return total / keras.ops.maximum(keras.ops.sum(mask, axis=1), 1.0)


def copy_backbone(pretrained, num_layers=None):
    """A fresh copy of the pretrained backbone, optionally its first layers.

    Args:
        pretrained: a KerasHub backbone with a `num_layers` config entry.
        num_layers: keep only the first `num_layers` transformer layers (a
            cheaper model for smoke runs); None keeps all.
    """
    config = pretrained.get_config()
    if num_layers is not None:
        if not 1 <= num_layers <= config["num_layers"]:
            raise ValueError(
                f"num_layers must be in [1, {config['num_layers']}]; got {num_layers}"
            )
        config["num_layers"] = num_layers
    backbone = pretrained.__class__.from_config(config)
    for layer in backbone.layers:
        if layer.weights:
            layer.set_weights(pretrained.get_layer(layer.name).get_weights())
    return backbone


class StepScaledDense(keras.layers.Dense):
    """A `Dense` layer whose training step is `step` times a plain one's.

    It computes `step * (x W + b)`. Adam's update of a variable does not
    depend on the scale of its gradient, so at a given learning rate the
    output moves `step` times as far per step as a plain `Dense`'s: a
    learning rate of its own, `step * lr`, with one optimizer. `W` is
    initialized `1 / step` times the plain layer's (same seed), so both
    start as the same function.

    Args:
        step: the factor (> 0).
        seed: seeds the Glorot-uniform kernel initialization.
        **kwargs: `Dense`'s arguments, without `kernel_initializer`.
    """

    def __init__(self, units, step, seed=None, **kwargs):
        # Glorot uniform is VarianceScaling(1, "fan_avg", "uniform"): a
        # variance 1 / step**2 as large draws the same values / step.
        initializer = keras.initializers.VarianceScaling(
            1.0 / step**2, mode="fan_avg", distribution="uniform", seed=seed
        )
        super().__init__(units, kernel_initializer=initializer, **kwargs)
        self.step = step

    def call(self, inputs):
        return self.step * super().call(inputs)


def build_classifier(backbone, num_labels, seed, head_step=1.0):
    """backbone -> masked mean -> Dense logits over all labels ("head").

    `head_step` != 1 makes the head a `StepScaledDense`: its learning rate
    is `head_step` times the adapters'.
    """
    inputs = {
        name: keras.Input(shape=tensor.shape[1:], dtype=tensor.dtype, name=name)
        for name, tensor in backbone.input.items()
    }
    outputs = backbone(inputs)
    sequence = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
    pooled = MaskedMeanPooling(name="mean_pooling")(sequence, inputs["padding_mask"])
    if head_step == 1:
        head = keras.layers.Dense(
            num_labels,
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
            name="head",
        )
    else:
        head = StepScaledDense(num_labels, head_step, seed=seed, name="head")
    logits = head(pooled)
    return keras.Model(inputs, logits, name="sentence_classifier")


class Timing(keras.callbacks.Callback):
    """Seconds per training step (wall clock between consecutive batches).

    Steps during which a `DevCurve` evaluation ran are left out, and so is
    the first (it compiles).
    """

    def __init__(self):
        super().__init__()
        self.seconds, self._last, self.skip_next = [], None, True

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self._last is not None and not self.skip_next:
            self.seconds.append(now - self._last)
        self._last, self.skip_next = now, False


class DevCurve(keras.callbacks.Callback):
    """Accuracy on a small dev subset every `every` steps (learning curves)."""

    def __init__(self, evaluate, every, timing):
        super().__init__()
        self.evaluate, self.every, self.timing = evaluate, every, timing
        self.points = []

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.every == 0:
            # `self.model` (not a captured reference) brings the weights of
            # the running fit back to the model on jax.
            self.points.append((batch + 1, self.evaluate(self.model)))
            self.timing.skip_next = True


def learning_rate_schedule(lr, steps):
    """Linear warm-up over the first 10 % of steps, then cosine decay to 0."""
    warmup = max(1, int(WARMUP_FRACTION * steps))
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(1, steps - warmup), warmup_target=lr, warmup_steps=warmup
    )


def run_path(output, split, method, lr, seed):
    return os.path.join(output, "runs", f"{split}-{method}-lr{lr:g}-seed{seed}.json")


def load_run(path, settings):
    """A finished run's record, or None if absent or made with other settings."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if record.get("settings") == settings else None


def save_run(path, record):
    """Writes the record atomically (a killed study never leaves half a file)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, ensure_ascii=False)
    os.replace(temporary, path)


def train_and_evaluate(study, method, lr, seed):
    """Trains one method with one learning rate and seed; returns its record.

    Args:
        study: the `Study` (settings, pretrained backbone, examples).
        method: a `methods.Method`.
        lr: peak learning rate.
        seed: seeds the weights' initialization, feature dropout and the
            data order (the same order for every method).

    Returns:
        The trained model and, for every split of `study.evaluations`, a
        record: settings, per-cell accuracies, dev learning curve, final
        loss, median step seconds, training wall seconds, parameter counts.
    """
    started = time.time()
    # Seed first, then build the preprocessor (see `data.Pipeline`).
    keras.utils.set_random_seed(seed)
    schema = methods_lib.schema_for(method, study.seen_languages, study.tasks)
    pipeline = data.Pipeline(
        study.preset,
        study.args.sequence_length,
        study.text_prefix,
        schema,
        study.label_names,
    )
    backbone = copy_backbone(study.pretrained, study.args.backbone_layers)
    classifier = build_classifier(
        backbone, len(study.label_names), seed, study.args.head_step[method.name][0]
    )
    model = methods_lib.adapt(method, classifier, backbone, schema, seed)
    model.compile(
        optimizer=OPTIMIZERS[study.args.optimizer](learning_rate_schedule(lr, study.steps)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )

    def dev_accuracy(model):
        correct = data.predict_correct(
            model, pipeline, study.curve_examples, study.label_names, study.task_masks
        )
        return float(np.mean(correct))

    timing = Timing()
    callbacks = [timing]
    if study.args.curve_points:
        every = max(1, study.steps // study.args.curve_points)
        callbacks.append(DevCurve(dev_accuracy, every, timing))
    train = data.training_data(
        study.seen_languages,
        study.args.batch_size,
        study.args.temperature,
        seed,
        study.args.data_dir,
    )
    history = model.fit(
        pipeline.apply(train, with_labels=True),
        epochs=1,
        steps_per_epoch=study.steps,
        callbacks=callbacks,
        shuffle=False,
        verbose=study.args.verbose,
    )
    shared = {
        "dev_curve": callbacks[-1].points if study.args.curve_points else [],
        "loss": float(history.history["loss"][-1]),
        "step_seconds_median": float(np.median(timing.seconds)) if timing.seconds else None,
        "seconds": round(time.time() - started, 1),
        "parameters": methods_lib.parameter_counts(model),
    }
    records = {}
    for split, examples in study.evaluations.items():
        correct = data.predict_correct(
            model, pipeline, examples, study.label_names, study.task_masks
        )
        records[split] = {
            "settings": study.run_settings(method, lr, seed, split),
            "cells": cell_accuracies(examples, correct),
            **shared,
        }
    return model, records


def cell_accuracies(examples, correct):
    """Accuracy and size of every (language, task) cell, with its kind."""
    cells = {}
    for example, ok in zip(examples, correct):
        key = (example["language"], example["task"], example["kind"])
        cells.setdefault(key, []).append(bool(ok))
    return [
        {
            "language": language,
            "task": task,
            "split": kind,
            "accuracy": float(np.mean(values)),
            "n": len(values),
        }
        for (language, task, kind), values in sorted(cells.items())
    ]

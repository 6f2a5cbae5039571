"""Generation with a retrofitted KerasHub `CausalLM` / `Seq2SeqLM`.

KerasHub compiles a task's `generate_step` (`jax.jit`, `tf.function`) and
calls it from `generate`; a FLix model passes each prompt's feature ids into
that compiled function as one more input, and runs the preprocessing around
it itself so the ids stay with their prompts.
"""

import keras

from keras_flix.src.feature_scope import current_feature_ids
from keras_flix.src.feature_scope import feature_scope
from keras_flix.src.inputs import FEATURE_IDS_KEY
from keras_flix.src.inputs import split_feature_ids
from keras_flix.src.inputs import standardize_feature_ids


def generate(model, inputs, max_length=None, stop_token_ids="auto", strip_prompt=False):
    """`FLixModel.generate`: see its docstring.

    Args:
        model: the `FLixModel` of a KerasHub `CausalLM` or `Seq2SeqLM`.
        inputs, max_length, stop_token_ids, strip_prompt: as for
            `FLixModel.generate`.

    Returns:
        What the base task's `generate` returns.
    """
    base = model.base_model
    if not hasattr(base, "generate_step"):
        raise AttributeError(
            f"'{base.name}' ({type(base).__name__}) does not generate; "
            "`generate` needs a KerasHub CausalLM or Seq2SeqLM."
        )
    owner = f"FLix model '{model.name}'"
    raw, feature_ids = split_feature_ids(inputs, owner)
    if isinstance(raw, dict) and set(raw) == {"prompts"}:
        raw = raw["prompts"]
    single = isinstance(raw, str)
    if single:
        raw = [raw]
    preprocessor = base.preprocessor
    if preprocessor is not None:
        if stop_token_ids == "auto":
            stop_token_ids = [preprocessor.tokenizer.end_token_id]
            if hasattr(preprocessor.tokenizer, "end_token2_id"):
                stop_token_ids.append(preprocessor.tokenizer.end_token2_id)
        raw = preprocessor.generate_preprocess(raw, sequence_length=max_length)
    prompts = dict(raw)
    mask = keras.ops.convert_to_numpy(prompts[_prompt_mask_key(prompts)])
    ids = keras.ops.convert_to_numpy(
        standardize_feature_ids(
            feature_ids, model.schema, batch_size=mask.shape[0], owner=owner
        )
    )
    if max_length is not None or preprocessor is not None:
        full = mask.all(axis=-1)
        if full.any():
            raise ValueError(
                f"Prompt {int(full.argmax())} fills all {mask.shape[-1]} "
                "positions of the sequence, leaving none to generate; "
                "shorten it or raise `max_length`."
            )
    prompts[FEATURE_IDS_KEY] = ids
    detached = _DetachedPreprocessor(base)
    with detached:
        outputs = base.generate(
            prompts, stop_token_ids=stop_token_ids, strip_prompt=strip_prompt
        )
    if preprocessor is not None:
        outputs = preprocessor.generate_postprocess(outputs)
        outputs = keras.tree.map_structure(_decode_strings, outputs)
        if single:
            outputs = outputs[0]
    return outputs


def take_ids_in_generate_step(task):
    """Makes `task.generate_step` read feature ids from its inputs.

    KerasHub compiles `generate_step` (`jax.jit`, `tf.function`); the ids
    must be an argument of that function, not a value captured while
    tracing, or a later call would reuse the first call's ids.
    """
    generate_step = task.generate_step

    def generate_step_with_ids(inputs, stop_token_ids=None):
        inputs = dict(inputs)
        feature_ids = inputs.pop(FEATURE_IDS_KEY, None)
        if feature_ids is None:
            if current_feature_ids() is not None:
                raise ValueError(
                    "`generate()` inside `keras_flix.feature_scope` is not "
                    "supported: the compiled generation function would keep "
                    "the first call's ids. Call the FLix model's "
                    "`generate({..., 'feature_ids': ids})` instead."
                )
            return generate_step(inputs, stop_token_ids)
        with feature_scope(feature_ids):
            return generate_step(inputs, stop_token_ids)

    object.__setattr__(task, "generate_step", generate_step_with_ids)
    task.generate_function = None


class _DetachedPreprocessor:
    """Runs a task without its preprocessor (inputs are preprocessed)."""

    def __init__(self, task):
        self.task = task

    def __enter__(self):
        self.preprocessor = self.task.preprocessor
        self.task.preprocessor = None

    def __exit__(self, *exc_info):
        self.task.preprocessor = self.preprocessor


def _prompt_mask_key(prompts):
    for key in ("padding_mask", "decoder_padding_mask"):
        if key in prompts:
            return key
    raise ValueError(
        "Expected preprocessed prompts with a 'padding_mask' (CausalLM) or "
        f"'decoder_padding_mask' (Seq2SeqLM). Received keys {sorted(prompts)}."
    )


def _decode_strings(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value

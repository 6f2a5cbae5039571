"""The `tf.data` pipeline that runs a KerasHub task's preprocessing for `fit`."""

import keras


def unpack(data):
    """`(x, y, sample_weight)` from a dataset element or a `(x, ...)` tuple.

    Example:

    >>> unpack((("x", "y"),))
    ('x', 'y', None)
    """
    if isinstance(data, tuple) and len(data) == 1:
        data = data[0]
    return keras.utils.unpack_x_y_sample_weight(data)


def preprocessed_dataset(preprocess_samples, x, y, sample_weight, batch_size):
    """A batched `tf.data` pipeline of preprocessed samples.

    Like KerasHub tasks, preprocessing runs in `tf.data` (on every backend),
    mapped over batches.

    Args:
        preprocess_samples: a function from `(x, y, sample_weight)` to the
            packed preprocessed batch (`FLixModel.preprocess_samples`).
        x, y, sample_weight, batch_size: as for `fit`; `x` may be a
            `tf.data.Dataset`, which must then carry `y` and the weights.

    Returns:
        The `tf.data.Dataset` of preprocessed batches.
    """
    import tensorflow as tf

    if isinstance(x, tf.data.Dataset):
        if y is not None or sample_weight is not None or batch_size is not None:
            raise ValueError(
                "When `x` is a tf.data.Dataset, pass neither `y`, "
                "`sample_weight` nor `batch_size`."
            )
        dataset = x
    else:
        dataset = tf.data.Dataset.from_tensor_slices(
            keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        ).batch(batch_size or 32)
    return dataset.map(
        lambda *sample: preprocess_samples(*unpack(sample)),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).prefetch(tf.data.AUTOTUNE)

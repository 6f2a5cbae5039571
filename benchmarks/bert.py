"""The random-weight KerasHub BERT the benchmark scripts time."""

import keras
import keras_hub


def random_backbone(settings):
    """A seeded random `BertBackbone` of the sizes in `settings`.

    Args:
        settings: a benchmark's settings: `vocabulary_size`, `num_layers`,
            `num_heads`, `hidden_dim`, `intermediate_dim`,
            `sequence_length` and `dropout`.

    Returns:
        The backbone; the same weights on every call with the same sizes.
    """
    keras.utils.set_random_seed(0)
    return keras_hub.models.BertBackbone(
        vocabulary_size=settings["vocabulary_size"],
        num_layers=settings["num_layers"],
        num_heads=settings["num_heads"],
        hidden_dim=settings["hidden_dim"],
        intermediate_dim=settings["intermediate_dim"],
        max_sequence_length=settings["sequence_length"],
        dropout=settings["dropout"],
    )

"""keras-flix quickstart: retrofit a KerasHub classifier with FLix adapters.

Trains a small BERT classifier (random weights, tiny vocabulary) on synthetic
feature-tagged text whose task decides what the label means ("topic": is there
a cat?, "sentiment": is something big?), then evaluates every language x task
cell, including a combination held out of training and a language never seen
(its feature is absent, so only the task adapter acts).

Run with any backend:  KERAS_BACKEND=jax python examples/quickstart.py
"""

import keras
import keras_hub
import numpy as np

import keras_flix as kf

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "big", "small"]
LANGUAGES = ["en", "de", "sw"]
TASKS = ["topic", "sentiment"]


def make_classifier(num_classes):
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=8
    )
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary),
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=8,
    )
    return keras_hub.models.BertTextClassifier(
        backbone, num_classes=num_classes, preprocessor=preprocessor
    )


def tagged_examples(schema, cells, n, seed):
    """Random sentences labelled by their task's question about the text."""
    rng = np.random.default_rng(seed)
    picks = [cells[i] for i in rng.integers(0, len(cells), n)]
    sentences = [rng.choice(WORDS, 4) for _ in range(n)]
    texts = np.array([" ".join(words) for words in sentences])
    features = [{"language": lang, "task": task} for lang, task in picks]
    labels = np.array(
        [
            int("cat" in words) if task == "topic" else 2 + int("big" in words)
            for (_, task), words in zip(picks, sentences)
        ]
    )
    return {"inputs": texts, "feature_ids": schema.encode(features)}, labels


def main():
    keras.utils.set_random_seed(0)
    # "sw" is unknown to the schema: at inference its feature is absent.
    schema = kf.FeatureSchema(
        {"language": LANGUAGES[:2], "task": TASKS}, unknown="absent"
    )
    model = kf.retrofit(
        make_classifier(num_classes=4),
        schema,
        rank=4,
        target_layers=["query", "value", "pooled_dense"],
        feature_dropout=0.1,
        train_also=["logits"],
        seed=0,
    )
    kf.summary(model)

    train_cells = [("en", "topic"), ("en", "sentiment"), ("de", "topic")]
    x, y = tagged_examples(schema, train_cells, 1024, seed=0)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, batch_size=32, epochs=20, verbose=2)

    print("\naccuracy per cell (chance = 1/2 within a task)")
    for language in LANGUAGES:
        for task in TASKS:
            cell = (language, task)
            kind = (
                "supervised" if cell in train_cells
                else "unseen language" if language not in schema.values("language")
                else "held-out combination"
            )
            x_test, y_test = tagged_examples(schema, [cell], 64, seed=1)
            predictions = model.predict(x_test, batch_size=64, verbose=0)
            accuracy = float(np.mean(predictions.argmax(-1) == y_test))
            print(f"  {language} x {task:<9}  {accuracy:5.2f}  ({kind})")


if __name__ == "__main__":
    main()

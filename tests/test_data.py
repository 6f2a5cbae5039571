"""keras_flix.data: tagging, mixtures, counts and per-cell splits."""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from helpers import SCHEMA
from helpers import randomize_adapters
from helpers import tiny_bert
from helpers import tiny_classifier

import keras_flix as kf
from keras_flix import data as kd

ABSENT_SCHEMA = kf.FeatureSchema(SCHEMA.get_config()["features"], unknown="absent")
WORDS = np.array(["the", "a", "cat", "dog", "sat", "ran", "big", "small"])


def elements(dataset):
    return list(dataset.as_numpy_iterator())


def ids_of(dataset):
    """The feature ids of every element of a tagged dataset, stacked."""
    spec = dataset.element_spec
    x = spec[0] if isinstance(spec, tuple) else spec
    assert x["feature_ids"].dtype == tf.int32
    rows = [(e[0] if isinstance(e, tuple) else e)["feature_ids"] for e in elements(dataset)]
    return np.stack(rows).tolist()


def texts(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([" ".join(rng.choice(WORDS, 4)) for _ in range(n)])


# --- tag: element structures ----------------------------------------------


def test_tag_dict_elements_with_constants():
    ds = tf.data.Dataset.from_tensor_slices({"a": [1, 2, 3]})
    tagged = kd.tag(ds, SCHEMA, language="sw", task="qa")
    assert tagged.element_spec["feature_ids"] == tf.TensorSpec([2], tf.int32)
    assert ids_of(tagged) == [[2, 0]] * 3
    assert [int(e["a"]) for e in elements(tagged)] == [1, 2, 3]
    # Types given neither way are absent; None is absent too.
    assert ids_of(kd.tag(ds, SCHEMA, task="ner")) == [[-1, 1]] * 3
    assert ids_of(kd.tag(ds, SCHEMA, language="de", task=None)) == [[1, -1]] * 3
    assert ids_of(kd.tag(ds, SCHEMA)) == [[-1, -1]] * 3
    assert tagged.cardinality() == 3


def test_tag_from_keys_drops_the_source_fields_unless_kept():
    ds = tf.data.Dataset.from_tensor_slices(
        ({"text": ["a", "b", "c", "d"], "lang": ["sw", "en", "de", ""]}, [0, 1, 2, 3])
    )
    tagged = kd.tag(ds, SCHEMA, from_keys={"language": "lang"}, task="ner")
    x, y = tagged.element_spec
    assert sorted(x) == ["feature_ids", "text"] and y.dtype == tf.int32
    # "" is absent.
    assert ids_of(tagged) == [[2, 1], [0, 1], [1, 1], [-1, 1]]
    assert [int(e[1]) for e in elements(tagged)] == [0, 1, 2, 3]
    kept = kd.tag(ds, SCHEMA, from_keys={"language": "lang"}, keep_keys=True)
    assert sorted(kept.element_spec[0]) == ["feature_ids", "lang", "text"]
    assert ids_of(kept) == [[2, -1], [0, -1], [1, -1], [-1, -1]]


def test_tag_two_fields_and_tuple_structures():
    x = {"lang": ["en", "sw"], "task": ["ner", "qa"], "v": [1.0, 2.0]}
    three = tf.data.Dataset.from_tensor_slices((x, [1, 0], [0.5, 2.0]))
    tagged = kd.tag(three, SCHEMA, from_keys={"language": "lang", "task": "task"})
    assert ids_of(tagged) == [[0, 1], [2, 0]]
    first = elements(tagged)[0]
    assert len(first) == 3 and sorted(first[0]) == ["feature_ids", "v"]
    assert (int(first[1]), float(first[2])) == (1, 0.5)
    one = kd.tag(tf.data.Dataset.from_tensor_slices((x,)), SCHEMA, from_keys={"task": "task"})
    assert isinstance(one.element_spec, tuple) and len(one.element_spec) == 1
    assert ids_of(one) == [[-1, 1], [-1, 0]]


def test_tag_non_dict_inputs_become_inputs_and_feature_ids():
    strings = tf.data.Dataset.from_tensor_slices(["x", "y"])
    tagged = kd.tag(strings, SCHEMA, language="en")
    assert sorted(tagged.element_spec) == ["feature_ids", "inputs"]
    assert [e["inputs"] for e in elements(tagged)] == [b"x", b"y"]
    pairs = kd.tag(
        tf.data.Dataset.from_tensor_slices((np.ones((2, 3), "float32"), [0, 1])),
        SCHEMA,
        task="qa",
    )
    x, y = pairs.element_spec
    assert x["inputs"].shape == (3,) and ids_of(pairs) == [[-1, 0], [-1, 0]]


def test_tag_batched_fields_gives_a_batch_of_ids():
    ds = tf.data.Dataset.from_tensor_slices(
        ({"lang": ["en", "sw", "de", "en", ""]}, np.arange(5))
    ).batch(2)
    tagged = kd.tag(ds, SCHEMA, from_keys={"language": "lang"}, task="ner")
    assert tagged.element_spec[0]["feature_ids"].shape.as_list() == [None, 2]
    batches = [e[0]["feature_ids"].tolist() for e in elements(tagged)]
    assert batches == [[[0, 1], [2, 1]], [[1, 1], [0, 1]], [[-1, 1]]]
    empty = tf.data.Dataset.from_tensors({"lang": tf.constant([], tf.string)})
    empty = kd.tag(empty, SCHEMA, from_keys={"language": "lang"}, task="qa")
    assert elements(empty)[0]["feature_ids"].shape == (0, 2)


def test_tagger_inside_a_map_equals_tag():
    ds = tf.data.Dataset.from_tensor_slices(
        ({"text": ["a", "b", "c"], "lang": ["en", "sw", ""]}, [0, 1, 2], [1.0, 1.0, 0.5])
    )
    tagger = kd.Tagger(SCHEMA, from_keys={"language": "lang"}, task="qa")
    expected = [[0, 0], [2, 0], [-1, 0]]
    assert ids_of(ds.map(tagger)) == expected
    assert ids_of(ds.batch(2).map(tagger).unbatch()) == expected
    fused = ds.batch(3).map(lambda x, y, w: tagger(x, y, w) + (tf.size(x["text"]),))
    x, y, w, n = next(iter(fused))
    assert sorted(x) == ["feature_ids", "text"] and int(n) == 3
    assert x["feature_ids"].numpy().tolist() == expected
    dicts = tf.data.Dataset.from_tensor_slices({"lang": ["sw"]})
    assert next(iter(dicts.map(tagger)))["feature_ids"].numpy().tolist() == [2, 0]
    # Fields are checked when the map is traced.
    with pytest.raises(ValueError, match="no field 'lang'"):
        tf.data.Dataset.from_tensor_slices({"language": ["en"]}).map(tagger)
    with pytest.raises(ValueError, match="Unknown value 'xx'"):
        kd.Tagger(SCHEMA, language="xx")


# --- tag: unknown values and bad input ------------------------------------


def test_unknown_value_in_a_field_stops_the_pipeline_naming_type_and_value():
    ds = tf.data.Dataset.from_tensor_slices({"lang": ["en", "sw", "xx", "de"]})
    tagged = kd.tag(ds, SCHEMA, from_keys={"language": "lang"})
    iterator = iter(tagged)
    assert next(iterator)["feature_ids"].numpy().tolist() == [0, -1]
    assert next(iterator)["feature_ids"].numpy().tolist() == [2, -1]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`language`[\s\S]*xx"):
        next(iterator)
    batched = kd.tag(ds.batch(4), SCHEMA, from_keys={"language": "lang"})
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"`language`[\s\S]*xx"):
        elements(batched)
    two = tf.data.Dataset.from_tensor_slices(
        {"lang": ["en", "sw"], "task": ["qa", "pos"]}
    )
    for dataset in (two, two.batch(2)):
        tagged = kd.tag(dataset, SCHEMA, from_keys={"language": "lang", "task": "task"})
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"`task`[\s\S]*pos"):
            elements(tagged)
    absent = kd.tag(ds, ABSENT_SCHEMA, from_keys={"language": "lang"})
    assert ids_of(absent) == [[0, -1], [2, -1], [-1, -1], [1, -1]]


def test_unknown_constant_is_checked_at_tag_time():
    ds = tf.data.Dataset.range(2)
    with pytest.raises(ValueError, match="Unknown value 'fr' for feature type 'language'"):
        kd.tag(ds, SCHEMA, language="fr")
    assert ids_of(kd.tag(ds, ABSENT_SCHEMA, language="fr", task="qa")) == [[-1, 0]] * 2


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"from_keys": {"language": "missing"}}, ValueError, "no field 'missing'.*'lang', 'n'"),
        ({"from_keys": {"language": "n"}}, ValueError, "field 'n'.*tf.string.*int32"),
        ({"from_keys": {"domain": "lang"}}, ValueError, "Unknown feature type 'domain'"),
        ({"domain": "web"}, ValueError, "Unknown feature type 'domain'"),
        ({"language": 3}, TypeError, "'language' must be a string.*3"),
        ({"from_keys": {"language": "lang"}, "language": "en"}, ValueError, "both"),
        ({"from_keys": ["lang"]}, TypeError, "`from_keys` must be a dict"),
        ({"from_keys": {"language": 0}}, TypeError, "string key"),
    ],
)
def test_tag_bad_input_fails_at_construction(kwargs, error, match):
    ds = tf.data.Dataset.from_tensor_slices({"lang": ["en"], "n": [1]})
    with pytest.raises(error, match=match):
        kd.tag(ds, SCHEMA, **kwargs)


def test_tag_bad_datasets_fail_at_construction():
    with pytest.raises(TypeError, match="tf.data.Dataset"):
        kd.tag([{"lang": "en"}], SCHEMA, language="en")
    with pytest.raises(TypeError, match="FeatureSchema"):
        kd.tag(tf.data.Dataset.range(1), {"language": ["en"]})
    strings = tf.data.Dataset.from_tensor_slices(["x"])
    with pytest.raises(ValueError, match="dict inputs"):
        kd.tag(strings, SCHEMA, from_keys={"language": "lang"})
    tagged = kd.tag(strings, SCHEMA, language="en")
    with pytest.raises(ValueError, match="tagged already"):
        kd.tag(tagged, SCHEMA, task="qa")
    four = tf.data.Dataset.from_tensor_slices(([1], [2], [3], [4]))
    with pytest.raises(ValueError, match="4 components"):
        kd.tag(four, SCHEMA, task="qa")
    matrix = tf.data.Dataset.from_tensor_slices({"lang": [["en", "de"]]}).batch(1)
    with pytest.raises(ValueError, match="shape \\[\\] .* or \\[batch\\]"):
        kd.tag(matrix, SCHEMA, from_keys={"language": "lang"})
    ranks = tf.data.Dataset.from_tensors({"lang": "en", "task": ["qa"]})
    with pytest.raises(ValueError, match="mix single examples"):
        kd.tag(ranks, SCHEMA, from_keys={"language": "lang", "task": "task"})


# --- KerasHub preprocessing, padding and batching -------------------------


def bert_tokenizer():
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS.tolist()
    return keras_hub.models.BertTokenizer(vocabulary=vocabulary)


PADDED_SHAPES = {
    "token_ids": [12], "segment_ids": [12], "padding_mask": [12], "feature_ids": [2]
}


def test_tagged_pipeline_with_tokenizer_padding_and_a_retrofitted_backbone():
    model = kf.retrofit(tiny_bert(), SCHEMA, rank=2)
    randomize_adapters(model)
    tokenizer = bert_tokenizer()
    sentences = ["the cat", "a big dog sat", "dog", "the small cat ran"]
    languages = ["en", "sw", "", "de"]
    ds = tf.data.Dataset.from_tensor_slices({"text": sentences, "lang": languages})
    ds = kd.tag(ds, SCHEMA, from_keys={"language": "lang"}, task="qa")

    def tokenize(x):
        token_ids = tokenizer(x["text"])
        return {
            "token_ids": token_ids,
            "segment_ids": tf.zeros_like(token_ids),
            "padding_mask": tf.ones_like(token_ids),
            "feature_ids": x["feature_ids"],
        }

    batches = ds.map(tokenize).padded_batch(2, padded_shapes=PADDED_SHAPES)
    first = next(iter(batches))
    assert first["token_ids"].shape == (2, 12) and first["feature_ids"].shape == (2, 2)
    padded = {k: np.concatenate([b[k] for b in batches.as_numpy_iterator()])
              for k in PADDED_SHAPES}
    expected_ids = SCHEMA.encode([{"language": lang or None, "task": "qa"}
                                  for lang in languages])
    np.testing.assert_array_equal(padded["feature_ids"], expected_ids)
    np.testing.assert_array_equal(padded["padding_mask"].sum(1), [2, 4, 1, 4])
    predicted = model.predict(batches, verbose=0)["pooled_output"]
    direct = model.predict({**padded, "feature_ids": expected_ids}, batch_size=2, verbose=0)
    np.testing.assert_allclose(predicted, direct["pooled_output"], rtol=1e-5, atol=1e-5)


def test_batched_preprocessor_pattern_after_mix():
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        bert_tokenizer(), sequence_length=8
    )
    a = tf.data.Dataset.from_tensor_slices(({"inputs": texts(6), "lang": ["en"] * 6}, [0] * 6))
    b = tf.data.Dataset.from_tensor_slices(({"inputs": texts(9), "lang": ["sw"] * 9}, [1] * 9))
    mixed = kd.mix([a, b], seed=1).batch(4)
    mixed = kd.tag(mixed, SCHEMA, from_keys={"language": "lang"}, task="ner")
    pipeline = mixed.map(
        lambda x, y: (preprocessor(x["inputs"]) | {"feature_ids": x["feature_ids"]}, y)
    )
    x, y = next(iter(pipeline))
    assert x["token_ids"].shape == (4, 8) and x["feature_ids"].shape == (4, 2)
    ids, labels = x["feature_ids"].numpy(), y.numpy()
    np.testing.assert_array_equal(ids[:, 0], np.where(labels == 0, 0, 2))
    np.testing.assert_array_equal(ids[:, 1], [1, 1, 1, 1])


# --- fit / evaluate / predict ---------------------------------------------


def cell_dataset(n, seed, language, task, field_language=False):
    """Raw text examples whose label is 2 * language id + task id."""
    label = 2 * SCHEMA.values("language").index(language) + SCHEMA.values("task").index(task)
    x = {"inputs": texts(n, seed)}
    if field_language:
        x["lang"] = [language] * n
    ds = tf.data.Dataset.from_tensor_slices((x, np.full(n, label, "int32")))
    if field_language:
        return kd.tag(ds, SCHEMA, from_keys={"language": "lang"}, task=task)
    return kd.tag(ds, SCHEMA, language=language, task=task)


# Keras warns when a dataset of unknown cardinality (a by_cell filter) ends.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Your input ran out of data")
@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.Adam(1e-2),
        # On jax: the row-sparse training step, with metrics and a head.
        lambda: kf.optimizers.LazyAdam(1e-2),
    ],
    ids=["adam", "lazy_adam"],
)
def test_fit_evaluate_predict_on_a_tagged_mixture(optimizer):
    model = kf.retrofit(
        tiny_classifier(num_classes=6), SCHEMA, rank=2, train_also=["logits"]
    )
    train = [
        cell_dataset(40, 0, "en", "qa"),
        cell_dataset(10, 1, "de", "ner", field_language=True),
        cell_dataset(80, 2, "sw", "qa", field_language=True),
    ]
    mixed = kd.mix(train, temperature=2.0, seed=0)
    model.compile(
        optimizer=optimizer(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(mixed.batch(16), steps_per_epoch=6, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert 0.0 <= history.history["accuracy"][-1] <= 1.0

    test = cell_dataset(8, 3, "en", "qa").concatenate(cell_dataset(8, 4, "de", "ner"))
    cells = kd.by_cell(test, SCHEMA, ("language", "task"))
    assert list(cells)[:2] == [("en", "qa"), ("en", "ner")]
    metrics = model.evaluate(cells["de", "ner"].batch(8), verbose=0, return_dict=True)
    assert 0.0 <= metrics["accuracy"] <= 1.0

    inputs_only = test.map(lambda x, y: x).batch(8)
    predicted = model.predict(inputs_only, verbose=0)
    assert predicted.shape == (16, 6)
    # The same texts with ids encoded by hand.
    expected_ids = SCHEMA.encode(
        [{"language": "en", "task": "qa"}] * 8 + [{"language": "de", "task": "ner"}] * 8
    )
    direct = model.predict(
        {"inputs": np.concatenate([texts(8, 3), texts(8, 4)]), "feature_ids": expected_ids},
        batch_size=8,
        verbose=0,
    )
    np.testing.assert_allclose(predicted, direct, rtol=1e-5, atol=1e-5)


# --- mix ------------------------------------------------------------------


def sized(n, language):
    return kd.tag(tf.data.Dataset.range(n), SCHEMA, language=language)


def test_temperature_probabilities_are_exact():
    datasets = [tf.data.Dataset.range(n) for n in (10, 100, 1000)]
    sizes = np.array([10, 100, 1000], "float64")
    np.testing.assert_allclose(
        kd.mixture_probabilities(datasets), sizes / sizes.sum(), rtol=1e-12
    )
    for temperature in (1.0, 2.0, 3.0, 0.5):
        expected = sizes ** (1 / temperature) / (sizes ** (1 / temperature)).sum()
        np.testing.assert_allclose(
            kd.mixture_probabilities(datasets, temperature=temperature),
            expected,
            rtol=1e-12,
        )
    np.testing.assert_allclose(
        kd.mixture_probabilities(datasets, temperature=1e6), [1 / 3] * 3, atol=1e-5
    )
    # Unknown cardinality (after filter) is counted; sizes skip the count.
    filtered = [d.filter(lambda x: x % 2 == 0) for d in datasets]
    assert filtered[0].cardinality() == tf.data.UNKNOWN_CARDINALITY
    halves = np.array([5, 50, 500], "float64")
    np.testing.assert_allclose(
        kd.mixture_probabilities(filtered, temperature=2.0),
        np.sqrt(halves) / np.sqrt(halves).sum(),
    )
    np.testing.assert_allclose(
        kd.mixture_probabilities(filtered, sizes=[1, 1, 2]), [0.25, 0.25, 0.5]
    )
    np.testing.assert_allclose(
        kd.mixture_probabilities(datasets, weights=[2, 0, 6]), [0.25, 0.0, 0.75]
    )


def test_realised_proportions_match_the_target():
    datasets = [sized(10, "en"), sized(1000, "de"), sized(200, "sw")]
    for kwargs in ({"temperature": 3.0}, {"temperature": 1.0}, {"weights": [1, 1, 2]}):
        target = kd.mixture_probabilities(datasets, **kwargs)
        mixed = kd.mix(datasets, seed=0, **kwargs)
        realised = kd.count_features(mixed, SCHEMA, max_elements=5000, normalize=True)
        got = [realised["language"][v] for v in ("en", "de", "sw")]
        np.testing.assert_allclose(got, target, atol=0.025)
        assert realised["task"]["<absent>"] == 1.0


def test_small_datasets_repeat_and_zero_weights_are_never_drawn():
    small = kd.tag(tf.data.Dataset.range(10), SCHEMA, language="en")
    large = kd.tag(tf.data.Dataset.range(1000, 2000), SCHEMA, language="de")
    never = kd.tag(tf.data.Dataset.range(5000, 5010), SCHEMA, language="sw")
    mixed = kd.mix([small, large, never], weights=[1, 1, 0], seed=3)
    values = np.array([int(e["inputs"]) for e in mixed.take(2000).as_numpy_iterator()])
    from_small = values[values < 10]
    assert 900 < len(from_small) < 1100
    # Every small example recurs about a hundred times.
    assert sorted(set(from_small.tolist())) == list(range(10))
    assert np.bincount(from_small).min() > 50
    assert not (values >= 5000).any()


def test_mix_is_deterministic_under_a_seed():
    def draw(seed):
        mixed = kd.mix([sized(30, "en"), sized(50, "de"), sized(20, "sw")],
                       temperature=2.0, seed=seed)
        return [(int(e["inputs"]), e["feature_ids"].tolist())
                for e in mixed.take(300).as_numpy_iterator()]

    first = draw(7)
    assert draw(7) == first
    assert draw(8) != first
    mixed = kd.mix([sized(30, "en"), sized(50, "de")], seed=7)
    ids = [e["feature_ids"].tolist() for e in mixed.take(50).as_numpy_iterator()]
    assert ids == [e["feature_ids"].tolist() for e in mixed.take(50).as_numpy_iterator()]
    assert mixed.cardinality() == tf.data.INFINITE_CARDINALITY


@pytest.mark.parametrize(
    "datasets, kwargs, error, match",
    [
        ([sized(3, "en"), sized(0, "en")], {}, ValueError, "dataset 1 is empty"),
        ([sized(3, "en"), sized(3, "en").filter(lambda e: False)], {"weights": [1, 1]},
         ValueError, "dataset 1 is empty"),
        ([sized(3, "en")] * 2, {"weights": [1, -1]}, ValueError, "non-negative.*\\[1, -1\\]"),
        ([sized(3, "en")] * 2, {"weights": [0, 0]}, ValueError, "not all 0"),
        ([sized(3, "en")] * 2, {"weights": [1]}, ValueError, "1 weights for 2 datasets"),
        ([sized(3, "en")] * 2, {"weights": [1, float("nan")]}, ValueError, "finite"),
        ([sized(3, "en")] * 2, {"sizes": [3]}, ValueError, "1 sizes for 2 datasets"),
        ([sized(3, "en")] * 2, {"sizes": [3, 0]}, ValueError, "positive integers"),
        ([sized(3, "en")] * 2, {"temperature": 0}, ValueError, "temperature=0"),
        ([sized(3, "en")] * 2, {"temperature": -1.0}, ValueError, "temperature=-1.0"),
        ([sized(3, "en")] * 2, {"temperature": "hot"}, ValueError, "temperature='hot'"),
        ([sized(3, "en")] * 2, {"weights": [1, 1], "temperature": 2.0}, ValueError, "not both"),
        ([sized(3, "en")] * 2, {"weights": [1, 1], "sizes": [1, 1]}, ValueError, "only used"),
        ([sized(3, "en"), sized(3, "en").repeat()], {}, ValueError, "dataset 1 is infinite"),
        ([sized(3, "en"), tf.data.Dataset.range(3)], {}, ValueError, "dataset 1 has elements"),
        ([], {}, ValueError, "empty"),
        ([sized(3, "en"), [1, 2]], {}, TypeError, "dataset 1"),
        (sized(3, "en"), {}, TypeError, "list of tf.data.Datasets"),
    ],
)
def test_mix_bad_input(datasets, kwargs, error, match):
    with pytest.raises(error, match=match):
        kd.mix(datasets, seed=0, **kwargs)


# --- counting and cells ---------------------------------------------------


def grid_dataset():
    languages = ["en", "en", "sw", "de", "", "sw", "en"]
    tasks = ["qa", "ner", "qa", "qa", "ner", "", "qa"]
    ds = tf.data.Dataset.from_tensor_slices(
        ({"id": np.arange(7), "lang": languages, "task": tasks}, np.arange(7))
    )
    return kd.tag(ds, SCHEMA, from_keys={"language": "lang", "task": "task"})


def test_count_features_and_cells():
    ds = grid_dataset()
    expected = {
        "language": {"en": 3, "de": 1, "sw": 2, "<absent>": 1},
        "task": {"qa": 4, "ner": 2, "<absent>": 1},
    }
    assert kd.count_features(ds, SCHEMA) == expected
    assert kd.count_features(ds.batch(3), SCHEMA) == expected
    assert kd.count_features(ds, SCHEMA, max_elements=2) == {
        "language": {"en": 2, "de": 0, "sw": 0, "<absent>": 0},
        "task": {"qa": 1, "ner": 1, "<absent>": 0},
    }
    fractions = kd.count_features(ds, SCHEMA, normalize=True)
    assert fractions["language"]["en"] == pytest.approx(3 / 7)
    assert kd.count_cells(ds, SCHEMA, ("language", "task")) == {
        ("en", "qa"): 2, ("en", "ner"): 1, ("de", "qa"): 1,
        ("sw", "qa"): 1, ("sw", "<absent>"): 1, ("<absent>", "ner"): 1,
    }
    assert kd.count_cells(ds, SCHEMA, "task") == {"qa": 4, "ner": 2, "<absent>": 1}
    assert kd.count_cells(ds, SCHEMA) == kd.count_cells(ds, SCHEMA, ("language", "task"))
    assert kd.count_features(ds.take(0), SCHEMA, normalize=True)["task"]["qa"] == 0.0


def test_count_bad_input():
    with pytest.raises(ValueError, match="infinite.*max_elements"):
        kd.count_features(grid_dataset().repeat(), SCHEMA)
    with pytest.raises(ValueError, match="tagged dataset"):
        kd.count_features(tf.data.Dataset.range(3), SCHEMA)
    with pytest.raises(ValueError, match="max_elements"):
        kd.count_cells(grid_dataset(), SCHEMA, max_elements=-1)
    with pytest.raises(ValueError, match="Unknown feature type 'domain'"):
        kd.count_cells(grid_dataset(), SCHEMA, ("language", "domain"))
    wrong = tf.data.Dataset.from_tensor_slices({"feature_ids": [[0, 5]]})
    with pytest.raises(ValueError, match="Feature id 5 is out of range for feature type 'task'"):
        kd.count_features(wrong, SCHEMA)
    three_columns = tf.data.Dataset.from_tensor_slices({"feature_ids": [[0, 0, 0]]})
    with pytest.raises(ValueError, match="shape \\[2\\]"):
        kd.count_features(three_columns, SCHEMA)


def test_by_cell_splits_by_feature_values():
    ds = grid_dataset()

    def ids(dataset):
        return [int(x["id"]) for x, _ in dataset.as_numpy_iterator()]

    cells = kd.by_cell(ds, SCHEMA, ("language", "task"))
    assert list(cells) == [
        ("en", "qa"), ("en", "ner"), ("de", "qa"), ("de", "ner"), ("sw", "qa"), ("sw", "ner")
    ]
    assert ids(cells["en", "qa"]) == [0, 6]
    assert ids(cells["de", "ner"]) == []
    by_language = kd.by_cell(ds, SCHEMA, "language", cells=["sw", "<absent>"])
    assert {k: ids(v) for k, v in by_language.items()} == {"sw": [2, 5], "<absent>": [4]}
    chosen = kd.by_cell(ds, SCHEMA, ("task", "language"), cells=[("ner", "<absent>")])
    assert ids(chosen["ner", "<absent>"]) == [4]
    with pytest.raises(ValueError, match="unknown value 'fr' for feature type 'language'"):
        kd.by_cell(ds, SCHEMA, "language", cells=["fr"])
    with pytest.raises(ValueError, match="does not match feature types"):
        kd.by_cell(ds, SCHEMA, ("language", "task"), cells=["en"])
    with pytest.raises(ValueError, match="batched"):
        kd.by_cell(ds.batch(2), SCHEMA, "language")

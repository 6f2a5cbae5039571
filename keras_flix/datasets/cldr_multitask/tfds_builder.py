"""TensorFlow Datasets builder for the bundled CLDR multitask data.

Importing this module registers the builder `"cldr_multitask"` with TFDS, so
that `tfds.load("cldr_multitask")` and `tfds.builder("cldr_multitask")` work.
The examples are generated from the files bundled with keras-flix (checked
against their SHA-256 digests): preparing the dataset downloads nothing and
runs offline. TensorFlow Datasets is imported here only; the rest of
`keras_flix.datasets.cldr_multitask` needs nothing beyond the standard
library.

Example:

    import tensorflow_datasets as tfds
    from keras_flix.datasets.cldr_multitask import tfds_builder  # registers

    test = tfds.load("cldr_multitask", split="test", data_dir="/tmp/tfds")
    example = next(iter(test))
    example["text"], example["label"], example["label_id"]

    builder = tfds_builder.prepare("/tmp/tfds")  # safe in parallel processes
"""

from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from keras_flix.datasets import cldr_multitask

_HOMEPAGE = "https://cldr.unicode.org/"

_DESCRIPTION = f"""\
Short localized strings from Unicode CLDR {cldr_multitask.CLDR_VERSION} and
emoji {cldr_multitask.EMOJI_VERSION}, labelled from the same Unicode data (no
model wrote, translated or labelled anything), for
{len(cldr_multitask.LANGUAGES)} languages and {len(cldr_multitask.TASKS)}
classification tasks: {", ".join(cldr_multitask.TASKS)}.

Every (language, task) cell is of one `kind`: "supervised" (train, dev and
test examples), "heldout_combination" (a seen language paired with a task it
is never trained on; test only) or "unseen_language" (the languages
{", ".join(cldr_multitask.UNSEEN_LANGUAGES)}, never seen in training; test
only). `label` is the label name and `label_id` its index in
`keras_flix.datasets.cldr_multitask.LABELS[task]`.

Data: Unicode License (LICENSE-UNICODE.txt next to the data files). Built
from the files bundled with keras-flix; nothing is downloaded.
"""

_CITATION = f"""\
@misc{{unicode_cldr_{cldr_multitask.CLDR_VERSION},
  author = {{{{Unicode Consortium}}}},
  title = {{Unicode Common Locale Data Repository (CLDR), version {cldr_multitask.CLDR_VERSION}}},
  howpublished = {{\\url{{{_HOMEPAGE}}}}},
  note = {{Distributed under the Unicode License}}
}}
"""


class CldrMultitask(tfds.core.GeneratorBasedBuilder):
    """CLDR multilingual x multitask text classification, from bundled files.

    Splits `train`, `dev` and `test` hold the same examples as
    `cldr_multitask.load(split)`; the builder version is the dataset's
    (`cldr_multitask.DATASET_VERSION`), so a prepared copy is rebuilt when
    the bundled data changes version. Features are strings except
    `label_id` (int64).
    """

    VERSION = tfds.core.Version(cldr_multitask.DATASET_VERSION)
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": (
            f"CLDR {cldr_multitask.CLDR_VERSION} and emoji "
            f"{cldr_multitask.EMOJI_VERSION}: 30 languages, 4 tasks, "
            "27 held-out (language, task) cells, 3 unseen languages."
        ),
    }

    def _info(self):
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "language": tfds.features.Text(),
                    "task": tfds.features.Text(),
                    "label": tfds.features.Text(),
                    "label_id": np.int64,
                    "kind": tfds.features.Text(),
                }
            ),
            supervised_keys=None,
            homepage=_HOMEPAGE,
            citation=_CITATION,
            license=(
                "Unicode License Agreement - Data Files and Software "
                "(LICENSE-UNICODE.txt next to the data files)"
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The data is bundled: nothing to download.
        # Fails with DataIntegrityError before anything is written if a
        # bundled file was altered.
        cldr_multitask.verify()
        return {
            split: self._generate_examples(split) for split in cldr_multitask.SPLITS
        }

    def _generate_examples(self, split):
        for index, example in enumerate(cldr_multitask.load(split)):
            task = example["task"]
            yield (
                index,
                {
                    "text": example["text"],
                    "language": example["language"],
                    "task": task,
                    "label": example["label"],
                    "label_id": cldr_multitask.LABELS[task].index(example["label"]),
                    "kind": example["kind"],
                },
            )


def prepare(data_dir=None):
    """Prepares the data set once, and returns its builder.

    Unlike `tfds.builder(...).download_and_prepare()`, this is safe to call
    from several processes at once (the seeds of a study started side by side
    on a fresh machine): TFDS writes each preparation to a temporary folder
    and renames it into place, and the rename of every process but the first
    fails with `FileExistsError`. A process that loses that race discards its
    copy (TFDS removes it) and uses the finished one.

    Args:
        data_dir: the TFDS data folder; None for TFDS's default.

    Returns:
        The prepared `tfds.core.DatasetBuilder`.

    Example:

        builder = prepare("/tmp/tfds")
        builder.info.splits["train"].num_examples
    """
    builder = tfds.builder("cldr_multitask", data_dir=data_dir)
    try:
        builder.download_and_prepare()
    except FileExistsError:
        # A new builder reads the metadata of the copy that won.
        builder = tfds.builder("cldr_multitask", data_dir=data_dir)
        if not builder.is_prepared():
            raise
    return builder

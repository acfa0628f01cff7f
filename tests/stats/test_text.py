"""Caption statistics on real COCO captions, hand-written captions in other languages, and bad input."""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from tests.conftest import COCO_DIR

from vlcurate.stats.text import (
    VOCAB_DIR,
    ConceptMatcher,
    char_count,
    char_counts,
    char_repetition_ratio,
    char_repetition_ratios,
    clean_caption,
    clean_captions,
    detect_language,
    detect_languages,
    load_vocabulary,
    plural_forms,
    word_count,
    word_counts,
    word_repetition_ratio,
    word_repetition_ratios,
)

OTHER_LANGUAGES = {
    "de": [
        "Ein Hund spielt im Park mit einem Ball.",
        "Zwei Männer fahren Fahrrad auf der Straße.",
        "Eine Katze schläft auf dem Sofa.",
        "Ein rotes Auto parkt vor dem Haus.",
        "Kinder spielen am Strand.",
        "Ein Teller mit Pizza und Salat.",
        "Eine Frau hält einen Regenschirm im Regen.",
        "Ein Zug fährt durch die Berge.",
    ],
    "fr": [
        "Un chien joue dans le parc avec une balle.",
        "Deux hommes font du vélo dans la rue.",
        "Un chat dort sur le canapé.",
        "Une voiture rouge garée devant la maison.",
        "Des enfants jouent sur la plage.",
        "Une assiette avec une pizza et une salade.",
        "Une femme tient un parapluie sous la pluie.",
        "Des fleurs dans un vase sur la table.",
    ],
    "es": [
        "Un perro juega en el parque con una pelota.",
        "Dos hombres andan en bicicleta por la calle.",
        "Un gato duerme en el sofá.",
        "Un coche rojo estacionado frente a la casa.",
        "Niños jugando en la playa.",
        "Una mujer sostiene un paraguas bajo la lluvia.",
        "Un tren atraviesa las montañas.",
        "Flores en un jarrón sobre la mesa.",
    ],
    "zh": [
        "一只狗在公园里玩球。",
        "两个男人在街上骑自行车。",
        "一只猫在沙发上睡觉。",
        "一辆红色的汽车停在房子前面。",
        "孩子们在海滩上玩耍。",
        "一盘披萨和沙拉。",
        "一个女人在雨中撑着伞。",
        "桌子上花瓶里的花。",
    ],
}
SURROGATE = b"a red bus \xff\xfe on a street".decode("utf-8", "surrogateescape")
ONE_MB = ("A man riding a wave on top of a surfboard. " * 25_000)[:1_000_000]


@pytest.fixture(scope="module")
def coco_captions() -> list[str]:
    """Every human caption of COCO-mini (train and val): real, short, English alt-text."""
    caps: list[str] = []
    for split in ("train2017", "val2017"):
        ann = json.loads((COCO_DIR / "annotations" / f"captions_{split}.json").read_text())
        caps += [a["caption"] for a in ann["annotations"]]
    assert len(caps) > 700
    return caps


# ------------------------------------------------------------------------------------- length


def test_counts_on_examples_and_missing() -> None:
    assert word_count("A man  riding\ta horse.") == 5
    assert char_count("A man riding") == 12
    assert word_count("两个男人在街上骑自行车。") == 1  # no spaces: one run
    assert word_count("dog\u3000cat") == 2  # ideographic space is whitespace
    assert (word_count(None), char_count(None), word_count(""), char_count("")) == (0, 0, 0, 0)
    assert word_count("   ") == 0 and char_count("   ") == 3
    assert char_count(SURROGATE) == len(SURROGATE) and word_count(SURROGATE) == 7
    assert word_count(ONE_MB) == len(ONE_MB.split()) and char_count(ONE_MB) == 1_000_000


def test_batch_counts_match_scalar_and_accept_arrow(coco_captions: list[str]) -> None:
    batch = [*coco_captions, None, ""]
    wc, cc = word_counts(batch), char_counts(batch)
    assert wc.dtype == np.int64 and wc.shape == (len(batch),)
    assert wc.tolist() == [word_count(t) for t in batch]
    assert cc.tolist() == [char_count(t) for t in batch]
    arrow = pa.chunked_array([pa.array(batch[:100]), pa.array(batch[100:])])
    assert word_counts(arrow).tolist() == wc.tolist()
    # DataComp's basic rule (> 2 words, > 5 chars) keeps every real COCO caption
    assert (wc[:-2] > 2).all() and (cc[:-2] > 5).all()


def test_wrong_types_raise_clear_errors() -> None:
    with pytest.raises(TypeError, match="str or None"):
        word_count(b"bytes caption")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="one string"):
        word_counts("a caption, not a batch")
    with pytest.raises(TypeError, match="str or None"):
        detect_language(123)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- language


def test_coco_captions_are_english(coco_captions: list[str]) -> None:
    langs, conf = detect_languages(coco_captions)
    english = np.array([lang == "en" for lang in langs])
    assert english.mean() >= 0.98, Counter(langs).most_common(5)
    assert conf.dtype == np.float32 and ((conf >= 0) & (conf <= 1)).all()
    assert float(np.median(conf[english])) > 0.8


@pytest.mark.parametrize("lang", sorted(OTHER_LANGUAGES))
def test_short_captions_in_other_languages(lang: str) -> None:
    for caption in OTHER_LANGUAGES[lang]:
        got, p = detect_language(caption)
        assert got == lang, (caption, got, p)
        assert 0.0 < p <= 1.0


def test_all_caps_english_is_english() -> None:
    # the raw model calls these Japanese/Portuguese; lower-casing first fixes it
    for caption in [
        "A PERSON IS SKIING ON THE SLOPE",
        "THERE ARE TWO PEOPLE RIDING HORSES ON THE BEACH SHORE",
    ]:
        assert detect_language(caption)[0] == "en"


def test_language_of_bad_input_is_defined() -> None:
    for text in [None, "", "   ", "12345 678", "!!! ???", "🙂🙂"]:
        assert detect_language(text) == ("und", 0.0), text
    assert detect_language(SURROGATE)[0] == "en"
    assert detect_language("a dog\non a\r\nsofa")[0] == "en"
    start = time.perf_counter()
    lang, p = detect_language(ONE_MB)
    assert lang == "en" and 0.0 <= p <= 1.0
    assert time.perf_counter() - start < 1.0  # only the first LANGID_MAX_CHARS characters are read
    langs, conf = detect_languages([None, "Un chat dort sur le canapé.", ""])
    assert langs == ["und", "fr", "und"] and conf[0] == 0.0 and conf[2] == 0.0


# --------------------------------------------------------------------------------- repetition


def _dj_char_ratio(text: str, n: int) -> float:
    """Data-Juicer's character_repetition_filter.compute_stats, written out independently."""
    grams = Counter(text[i : i + n] for i in range(len(text) - n + 1))
    if not grams:
        return 0.0
    freq = sorted(grams.values(), reverse=True)
    k = min(int(math.sqrt(len(freq))), len(freq) - sum(1 for f in freq if f == 1))
    return sum(freq[:k]) / sum(freq)


LOOPS = [
    "a cat a cat a cat a cat a cat a cat a cat a cat a cat a cat",
    "dog dog dog dog dog dog dog dog dog dog dog dog dog dog",
    "A man riding a wave on top of a surfboard. " * 4,
    "buy now buy now buy now buy now buy now buy now buy now buy now",
]


def test_char_repetition_matches_data_juicer(coco_captions: list[str]) -> None:
    for text in [*coco_captions[:200], *LOOPS, "short", "aaaaaaaaaaaaaaaaaaaa"]:
        for n in (3, 10):
            assert char_repetition_ratio(text, n) == pytest.approx(_dj_char_ratio(text, n)), (text, n)


def test_repetition_separates_loops_from_captions(coco_captions: list[str]) -> None:
    normal_char = char_repetition_ratios(coco_captions)
    normal_rep = char_repetition_ratios(coco_captions, mode="repeated")
    normal_word = word_repetition_ratios(coco_captions, n=3)
    assert np.median(normal_char) == 0.0 and np.median(normal_word) == 0.0
    for loop in LOOPS:
        # "repeated" and word ratios: any loop of 2+ periods is close to 1
        assert char_repetition_ratio(loop, mode="repeated") > max(0.8, float(normal_rep.max())), loop
        assert word_repetition_ratio(loop, n=3) > max(0.6, float(normal_word.max())), loop
    # Data-Juicer's char rule only sees short periods (about floor(sqrt(p))/p for period p)
    assert char_repetition_ratio(LOOPS[0]) == pytest.approx(_dj_char_ratio(LOOPS[0], 10))
    assert char_repetition_ratio(LOOPS[1]) > float(normal_char.max())


def test_word_repetition_follows_data_juicer_rules() -> None:
    assert word_repetition_ratio("a b a b a b", n=2) == 1.0
    assert word_repetition_ratio("a b c d", n=2) == 0.0
    # lower-cased and stripped of punctuation and digits, like Data-Juicer's words_refinement
    assert word_repetition_ratio("Dog, dog! DOG. 42 dog", n=1) == 1.0
    assert word_repetition_ratio("one two three", n=10) == 0.0  # fewer words than n
    # default n = 10 as in Data-Juicer
    assert word_repetition_ratio(" ".join(["spam eggs"] * 12)) == 1.0


def test_repetition_of_bad_input_is_defined() -> None:
    for fn in (char_repetition_ratio, word_repetition_ratio):
        assert fn(None) == 0.0 and fn("") == 0.0
        with pytest.raises(ValueError, match="n must be"):
            fn("text", 0)
    with pytest.raises(ValueError, match="mode"):
        char_repetition_ratio("some text long enough", 3, mode="other")  # type: ignore[arg-type]
    assert 0.0 <= char_repetition_ratio(SURROGATE, 3) <= 1.0
    start = time.perf_counter()
    assert char_repetition_ratio(ONE_MB, mode="repeated") > 0.9 and word_repetition_ratio(ONE_MB) > 0.9
    assert char_repetition_ratio(ONE_MB) == pytest.approx(6 / 43, abs=0.01)  # period 43: floor(sqrt(43))/43
    assert time.perf_counter() - start < 10.0


def test_long_text_hashed_path_equals_exact_count() -> None:
    rng = random.Random(0)
    for alphabet in ("ab ", "abcdefgh ", "the cat sat on a mat "):
        text = "".join(rng.choice(alphabet) for _ in range(20_000))
        for mode in ("data_juicer", "repeated"):
            exact = Counter(text[i : i + 10] for i in range(len(text) - 9)).values()
            freq = sorted(exact, reverse=True)
            repeated = sum(1 for f in freq if f > 1)
            top = min(math.isqrt(len(freq)), repeated) if mode == "data_juicer" else repeated
            assert char_repetition_ratio(text, 10, mode) == pytest.approx(sum(freq[:top]) / len(text[9:]))


# ----------------------------------------------------------------------------------- cleaning


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Image may contain: 2 people, people standing and outdoor", "2 people, people standing and outdoor"),
        ("Golden retriever puppy on grass - stock photo", "Golden retriever puppy on grass"),
        ("Beach at dawn | Royalty-Free Stock Photo | Shutterstock ID 123456", "Beach at dawn"),
        ("<p>A <b>red</b> car &amp; a bus</p>", "A red car & a bus"),
        ("&lt;b&gt;Bold&lt;/b&gt; sunset", "Bold sunset"),
        ("Lighthouse https://example.com/img/lh.jpg?w=300 at night", "Lighthouse at night"),
        ("visit www.foo.org or example.com for more", "visit or for more"),
        ("IMG_1234.JPG", ""),
        ("DSC01234 sunset over the sea", "sunset over the sea"),
        ("my-holiday-photo.png: two kids on a beach", "two kids on a beach"),
        ("Copyright © 2019 John Smith. All rights reserved.", "John Smith."),
        ("A   dog\n\n on\ta  sofa ", "A dog on a sofa"),
        ("Click to enlarge: a red barn", "a red barn"),
        ("Mr. Smith and Dr. Who at 3.5 km", "Mr. Smith and Dr. Who at 3.5 km"),
        ("", ""),
    ],
)
def test_clean_caption_examples(raw: str, clean: str) -> None:
    assert clean_caption(raw) == clean
    assert clean_caption(clean) == clean  # idempotent


def test_clean_leaves_real_captions_alone(coco_captions: list[str]) -> None:
    cleaned = clean_captions(coco_captions)
    changed = [(a, b) for a, b in zip(coco_captions, cleaned, strict=True) if b != " ".join(a.split())]
    # only a trailing comma left by the annotator may go
    assert all(a.rstrip(" ,") == b for a, b in changed), changed


def test_clean_bad_input() -> None:
    assert clean_caption(None) is None
    assert clean_captions(["<i>x</i>", None]) == ["x", None]
    assert clean_caption(SURROGATE) == SURROGATE
    with pytest.raises(TypeError):
        clean_caption(b"<b>x</b>")  # type: ignore[arg-type]
    start = time.perf_counter()
    out = clean_caption(("<div>A dog http://a.com/x on a sofa</div> " * 20_000)[:1_000_000])
    assert out is not None and "<" not in out and "http" not in out and out.startswith("A dog on a sofa")
    assert time.perf_counter() - start < 10.0


# ---------------------------------------------------------------------------- concept matching


def test_imagenet1k_vocabulary_ships_with_the_package() -> None:
    vocab = load_vocabulary("imagenet1k")
    assert len(vocab) == 1000
    assert (VOCAB_DIR / "imagenet1k.txt").is_file()
    assert vocab[:3] == ["tench", "goldfish", "great white shark"] and vocab[-1] == "toilet paper"
    with pytest.raises(FileNotFoundError, match="imagenet1k"):
        load_vocabulary("no-such-vocabulary")


def test_plural_forms() -> None:
    assert {"buses"} <= plural_forms("bus")
    assert {"daisies"} <= plural_forms("daisy") and "jerseys" in plural_forms("jersey")
    assert {"wolves"} <= plural_forms("wolf") and "knives" in plural_forms("knife")
    assert {"mice"} <= plural_forms("mouse") and "snowmen" in plural_forms("snowman")
    assert "people" in plural_forms("person") and "tomatoes" in plural_forms("tomato")


def test_concept_matching_on_imagenet() -> None:
    m = ConceptMatcher.from_vocabulary("imagenet1k")
    assert m.match("Two Great White Sharks near the boat") == ["great white shark"]
    assert m.match("a TEDDY BEAR and three tabby cats") == ["teddy bear", "tabby cat"]
    assert m.match("a man in a t-shirt") == ["T-shirt"]  # hyphen / case normalised
    assert m.match("A St. Bernard's bowl") == ["St. Bernard"]  # punctuation and possessive
    assert m.match("kites flying over the beach") == ["kite (bird of prey)", "beach"]  # note not matched
    assert m.match("a carved baluster") == ["baluster / handrail"]  # synonyms
    assert m.match("concatenate the cheese-less pizzas") == ["pizza"]  # word boundaries: no "cat"
    assert m.match("pineapple-topped pizza") == ["pineapple", "pizza"]  # a hyphen is a boundary
    assert m.match("A parking meter beside parking meters") == ["parking meter"]  # each entry once
    assert m.match("nothing here") == [] and m.match(None) == [] and m.match("") == []


def test_concept_matching_custom_vocabulary_and_batches(coco_captions: list[str]) -> None:
    m = ConceptMatcher(["dog", "hot dog", "fire truck", "person", "glass"])
    # every mention counts, overlapping ones too: "hot dogs" also mentions "dogs"
    assert m.match("Hot dogs near fire trucks") == ["hot dog", "dog", "fire truck"]
    assert m.match("a dog near a hot dog stand") == ["dog", "hot dog"]
    assert m.match("three people and their glasses") == ["person", "glass"]
    assert m.match("dogma") == [] and m.match("hotdog") == []
    assert ConceptMatcher(["dog"], plurals=False).match("dogs") == []
    # one-letter synonyms (ImageNet-21k has "A" for vitamin A) would match every "a"
    assert ConceptMatcher(["vitamin A / A", "dog"]).match("a dog") == ["dog"]
    assert ConceptMatcher(["vitamin A / A", "dog"], min_chars=1).match("a dog") == ["vitamin A / A", "dog"]
    batch = ["a dog", None, "", SURROGATE + " dog", "people"]
    assert m.match_batch(batch) == [["dog"], [], [], ["dog"], ["person"]]
    assert m.contains_batch(batch).tolist() == [True, False, False, True, True]
    clean_batch = [t if t != batch[3] else "a dog" for t in batch]  # Arrow cannot hold lone surrogates
    assert m.match_batch(pa.array(clean_batch)) == m.match_batch(clean_batch)
    coco = ConceptMatcher.from_vocabulary()
    hits = coco.match_batch(coco_captions)
    assert hits == [coco.match(c) for c in coco_captions]
    assert 0.2 < np.mean([bool(h) for h in hits]) < 0.8  # COCO mentions many ImageNet objects
    with pytest.raises(ValueError, match="no matchable"):
        ConceptMatcher(["", "()"])
    big = coco.match(ONE_MB + " pizza")
    assert big == ["pizza"]


def test_concept_matching_scales_to_21k_terms(coco_captions: list[str]) -> None:
    rng = random.Random(1)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(5, 10))) for _ in range(20_000)]
    vocab += [f"{a} {b}" for a, b in zip(vocab[:1000], vocab[1000:2000], strict=True)] + ["surfboard"]
    m = ConceptMatcher(vocab)
    assert m.num_keys > 40_000
    captions = coco_captions * 13  # ~10k captions
    start = time.perf_counter()
    hits = m.match_batch(captions)
    assert time.perf_counter() - start < 5.0
    assert sum(bool(h) for h in hits) >= sum("surfboard" in c.lower() for c in captions)
    two_words = f"{vocab[5]} {vocab[1005]}"
    got = m.match(f"a {vocab[5]}, and {two_words}s")
    assert got[0] == vocab[5] and set(got[1:]) == {vocab[1005], two_words}  # both end at one place

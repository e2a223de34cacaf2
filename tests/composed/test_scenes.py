"""The scene generator: deterministic, its texts say exactly how the target
differs from the source, and its splits share no scene."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from embedder_service.tirg.words import tokens, vocabulary
from training.tirg.scenes import (
    CELLS,
    UNSEEN,
    Example,
    Obj,
    Scene,
    examples,
    layout,
    png,
    render,
    take,
)

OBJECT = r"(?:the )?(?:(small|large) )?(\w+) (square|circle|triangle)(?: in the ([\w-]+))?"


def find(scene: Scene, words: str) -> Obj:
    """The one object of ``scene`` the words pick out (the test's own reading)."""
    m = re.fullmatch(OBJECT, words)
    assert m, words
    size, colour, shape, cell = m.groups()
    found = [
        o
        for o in scene
        if o.colour == colour
        and o.shape == shape
        and (size is None or o.size == size)
        and (cell is None or CELLS[o.cell] == cell)
    ]
    assert len(found) == 1, (words, scene)  # the text names exactly one object
    return found[0]


def apply(ex: Example) -> set[tuple[int, str, str, str]]:
    """What the target must be, read from the source and the text alone."""
    cells = {o.cell: (o.cell, o.size, o.colour, o.shape) for o in ex.source}
    text = ex.text
    if m := re.fullmatch(
        r"add a (small|large) (\w+) (square|circle|triangle) to the ([\w-]+)", text
    ):
        size, colour, shape, place = m.groups()
        cell = CELLS.index(place)
        assert cell not in cells, "added where an object already is"
        cells[cell] = (cell, size, colour, shape)
    elif m := re.fullmatch(r"remove (.+)", text):
        del cells[find(ex.source, m.group(1)).cell]
    elif m := re.fullmatch(r"make (.+) (small|large)", text):
        o = find(ex.source, m.group(1))
        assert o.size != m.group(2), "a change that changes nothing"
        cells[o.cell] = (o.cell, m.group(2), o.colour, o.shape)
    elif m := re.fullmatch(r"make (.+) (\w+)", text):
        o = find(ex.source, m.group(1))
        assert o.colour != m.group(2), "a change that changes nothing"
        cells[o.cell] = (o.cell, o.size, m.group(2), o.shape)
    else:
        pytest.fail(f"a text the test cannot read: {text!r}")
    return set(cells.values())


def shown(scene: Scene) -> set[tuple[int, str, str, str]]:
    return {(o.cell, o.size, o.colour, o.shape) for o in scene}


def test_the_same_seed_makes_the_same_examples_and_pixels() -> None:
    a, b = take("test", 5, 50), take("test", 5, 50)
    assert a == b
    assert [png(e.source) + png(e.target) for e in a[:10]] == [
        png(e.source) + png(e.target) for e in b[:10]
    ]
    assert take("test", 6, 50) != a
    assert take("train", 5, 50) != a


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_target_differs_from_its_source_exactly_as_the_text_says(split: str) -> None:
    seen_kinds = set()
    for ex in take(split, 3, 600):
        assert shown(ex.target) == apply(ex), ex.text
        assert 1 <= len(ex.target) <= 5 and 1 <= len(ex.source) <= 5
        assert render(ex.source).tobytes() != render(ex.target).tobytes()
        seen_kinds.add(ex.kind)
        # Objects the text leaves alone keep their place to the pixel.
        kept = set(ex.source) & set(ex.target)
        assert len(kept) >= min(len(ex.source), len(ex.target)) - 1
    assert seen_kinds == {"add", "remove", "colour", "size"}


def test_the_splits_share_no_scene_and_training_never_reads_unseen_pairs() -> None:
    train = take("train", 17, 4000)
    val = take("val", 17, 400)
    test = take("test", 17, 800)
    scenes = [
        {layout(s) for ex in split for s in (ex.source, ex.target)} for split in (train, val, test)
    ]
    assert not scenes[0] & scenes[1] and not scenes[0] & scenes[2] and not scenes[1] & scenes[2]
    assert not any(ex.unseen for ex in train + val)
    # Every source comes with four different modifications, in training too.
    for split in (train, test):
        assert [ex.source for ex in split[:4]] == [split[0].source] * 4
        assert len({layout(ex.target) for ex in split[:4]}) == 4
        assert split[4].source != split[0].source
    held_out_unseen = [ex for ex in test if ex.unseen]
    assert len(held_out_unseen) > 20  # the held-out texts do use them
    for ex in held_out_unseen:  # the text names both words ("make the red square cyan")
        assert any({c, s} <= set(tokens(ex.text)) for c, s in UNSEEN), ex.text


def test_every_generated_word_is_in_the_vocabulary_and_synonyms_map_to_it() -> None:
    words = set(vocabulary())
    for ex in take("train", 1, 500) + take("test", 1, 200):
        assert set(tokens(ex.text)) <= words, ex.text
    assert tokens("Make the red Cube blue") == ["make", "the", "red", "square", "blue"]
    assert tokens("remove the big grey sphere") == ["remove", "the", "large", "gray", "circle"]


def test_a_split_must_be_named() -> None:
    with pytest.raises(ValueError, match="train, val or test"):
        next(examples("validation", 1))


def test_the_demo_writes_a_gallery_and_the_queries_to_try(tmp_path: Path) -> None:
    import csv

    from training.tirg.demo import write

    table = write(tmp_path, 8, 17)
    rows = list(csv.DictReader(table.read_text().splitlines()))
    assert len(rows) == 8 and len(list((tmp_path / "gallery").glob("*.png"))) == 10
    for row in rows:  # every target is in the gallery, every query a file
        assert (tmp_path / "gallery" / row["target"].rsplit("/", 1)[1]).is_file()
        assert Path(row["query"]).read_bytes()[:4] == b"\x89PNG"

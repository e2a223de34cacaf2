"""CSS-like scenes for composed retrieval (TIRG, seed 003), made in code.

A scene is up to five flat shapes (square, circle, triangle) in eight colours
and two sizes on a 3x3 grid, drawn on a light background. A modification
turns a source scene into a target scene and says so in words: add an object
("add a small red circle to the top-left"), remove one ("remove the blue
square"), or change one's colour or size ("make the yellow triangle red",
"make the yellow triangle large"). Everything is deterministic from a seed.

Splits share no scene: each layout hashes to one of training, validation
(for choosing when to stop training) and the held-out test split, and an
example belongs to a split only when both its source and its target layouts
hash there. Training and validation never see modifications whose text names
a colour and shape of ``UNSEEN`` together, so the held-out texts include
object words in combinations the model never read (as CSS's test set does).
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace

from PIL import Image, ImageDraw

from embedder_service.tirg.words import CELLS, COLOURS, SHAPES, SIZES

SIZE = 128  # pixels, square
RGB = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (240, 200, 20),
    "purple": (148, 70, 189),
    "cyan": (23, 190, 207),
    "orange": (255, 127, 14),
    "gray": (120, 120, 120),
}
assert tuple(RGB) == COLOURS  # every colour word is drawn, and only those
MAX_OBJECTS = 5
BACKGROUND = (236, 236, 232)
# Colour and shape pairs that training texts never name together.
UNSEEN = frozenset({("red", "triangle"), ("cyan", "square")})
BUCKETS = 5  # of layouts: one in five held out for the test, one in five for validation
SPLITS = ("train", "val", "test")
KINDS = ("add", "remove", "colour", "size")


@dataclass(frozen=True, order=True)
class Obj:
    cell: int  # index into CELLS
    shape: str
    colour: str
    size: str
    dx: int = 0  # small offset within the cell, in pixels
    dy: int = 0

    def words(self) -> str:
        return f"{self.colour} {self.shape}"


Scene = tuple[Obj, ...]  # sorted by cell, one object a cell at most


def layout(scene: Scene) -> str:
    """What a scene shows, offsets aside: equal layouts are the same scene."""
    return ";".join(f"{o.cell}:{o.size}:{o.colour}:{o.shape}" for o in sorted(scene))


@dataclass(frozen=True)
class Example:
    source: Scene
    target: Scene
    text: str
    kind: str  # add, remove, colour, size
    named: tuple[str, str]  # (colour, shape) the text ends up naming

    @property
    def unseen(self) -> bool:
        return self.named in UNSEEN


def render(scene: Scene) -> Image.Image:
    """The scene as a SIZE x SIZE RGB image."""
    img = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(img)
    cell = SIZE / 3
    for o in scene:
        row, col = divmod(o.cell, 3)
        cx = (col + 0.5) * cell + o.dx
        cy = (row + 0.5) * cell + o.dy
        r = 17 if o.size == "large" else 9
        box = (cx - r, cy - r, cx + r, cy + r)
        fill = RGB[o.colour]
        if o.shape == "square":
            draw.rectangle(box, fill=fill)
        elif o.shape == "circle":
            draw.ellipse(box, fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    return img


def png(scene: Scene) -> bytes:
    """The scene as a PNG file."""
    out = io.BytesIO()
    render(scene).save(out, "PNG")
    return out.getvalue()


def _random_obj(rng: random.Random, cell: int) -> Obj:
    return Obj(
        cell,
        rng.choice(SHAPES),
        rng.choice(list(COLOURS)),
        rng.choice(SIZES),
        rng.randint(-3, 3),
        rng.randint(-3, 3),
    )


def random_scene(rng: random.Random, low: int = 1, high: int = MAX_OBJECTS) -> Scene:
    cells = rng.sample(range(9), rng.randint(low, high))
    return tuple(sorted(_random_obj(rng, c) for c in cells))


def describe(obj: Obj, scene: Scene) -> str:
    """The shortest words that pick ``obj`` out of ``scene``: colour and
    shape, with its size or then its place when another object shares them."""
    same = [o for o in scene if o.words() == obj.words() and o != obj]
    if not same:
        return f"the {obj.words()}"
    if all(o.size != obj.size for o in same):
        return f"the {obj.size} {obj.words()}"
    return f"the {obj.words()} in the {CELLS[obj.cell]}"


def modify(rng: random.Random, source: Scene) -> Example:
    """One modification of ``source``, its kind drawn among those possible."""
    kinds = [
        k
        for k in KINDS
        if not (k == "add" and len(source) >= MAX_OBJECTS)
        and not (k == "remove" and len(source) < 2)
    ]
    kind = rng.choice(kinds)
    if kind == "add":
        free = [c for c in range(9) if c not in {o.cell for o in source}]
        new = _random_obj(rng, rng.choice(free))
        new = replace(new, dx=0, dy=0)
        target = tuple(sorted((*source, new)))
        place = "the center" if CELLS[new.cell] == "center" else f"the {CELLS[new.cell]}"
        text = f"add a {new.size} {new.words()} to {place}"
        return Example(source, target, text, kind, (new.colour, new.shape))
    obj = rng.choice(source)
    rest = tuple(o for o in source if o != obj)
    if kind == "remove":
        return Example(
            source, rest, f"remove {describe(obj, source)}", kind, (obj.colour, obj.shape)
        )
    if kind == "colour":
        colour = rng.choice([c for c in COLOURS if c != obj.colour])
        changed = replace(obj, colour=colour)
        text = f"make {describe(obj, source)} {colour}"
        named = (colour, obj.shape)
    else:
        size = "small" if obj.size == "large" else "large"
        changed = replace(obj, size=size)
        text = f"make {describe(obj, source)} {size}"
        named = (obj.colour, obj.shape)
    return Example(source, tuple(sorted((*rest, changed))), text, kind, named)


def split_of(scene: Scene) -> str:
    bucket = hashlib.sha256(layout(scene).encode()).digest()[0] % BUCKETS
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def examples(split: str, seed: int) -> Iterator[Example]:
    """Endless examples of one split ("train", "val" or "test"), the same for
    the same seed; no scene of one split appears in another. Each source
    comes with SIBLINGS different modifications, one after the other (as in
    CSS, where a scene is the source of several queries): their targets
    differ from the source by one object each, so finding the right one
    takes the text, not only the image, and in a training batch each
    query's hardest wrong answers are its siblings' targets."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: use train, val or test")
    rng = random.Random(f"{split}:{seed}")
    while True:
        source = random_scene(rng)
        if split_of(source) != split:
            continue
        targets: set[str] = set()
        for _ in range(TRIES):
            ex = modify(rng, source)
            key = layout(ex.target)
            if split != "test" and ex.unseen:
                continue
            if split_of(ex.target) == split and key not in targets:
                targets.add(key)
                yield ex
                if len(targets) == SIBLINGS:
                    break


SIBLINGS = 4
TRIES = 400  # modifications drawn at most for one source


def take(split: str, seed: int, n: int) -> list[Example]:
    it = examples(split, seed)
    return [next(it) for _ in range(n)]

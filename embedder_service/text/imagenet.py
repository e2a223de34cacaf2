"""The 1,000 ImageNet classes in the order the classifiers number them, each
with its WordNet lemmas ("jersey, T-shirt, tee shirt") and gloss ("a
close-fitting pullover shirt"): the files timm ships (Apache-2.0), read from
the pinned package (installed without its dependencies; never imported)."""

from __future__ import annotations

from dataclasses import dataclass

from embedder_service.weights import Bundle, checked_file

INSTALL = "pip install --no-deps timm==1.0.31"
NOTE = "timm 1.0.31 (Apache-2.0)"
SYNSETS = Bundle(
    "timm",
    ("data", "_info", "imagenet_synsets.txt"),
    "70002b0ff5de60a3a17a82dbfcff291931f96225ddf941ad2e182fc39e183d15",
    INSTALL,
    NOTE,
)
LEMMAS = Bundle(
    "timm",
    ("data", "_info", "imagenet_synset_to_lemma.txt"),
    "1b8babda187421a4bde0c9c5a197c36f6bdda962f7ca11ffb2813806cbb2178f",
    INSTALL,
    NOTE,
)
GLOSSES = Bundle(
    "timm",
    ("data", "_info", "imagenet_synset_to_definition.txt"),
    "191e227d48fc8c7b7e2d2a3cac41fc8b2eb517d9d2819d0edbc91c5767250eed",
    INSTALL,
    NOTE,
)


@dataclass(frozen=True)
class ImagenetClasses:
    lemmas: tuple[str, ...]  # "jersey, T-shirt, tee shirt", in class order
    glosses: tuple[str, ...]

    @classmethod
    def bundled(cls) -> ImagenetClasses:
        synsets = checked_file(SYNSETS).read_text(encoding="utf-8").split()
        lemmas = _table(LEMMAS)
        glosses = _table(GLOSSES)
        return cls(tuple(lemmas[s] for s in synsets), tuple(glosses[s] for s in synsets))


def _table(bundle: Bundle) -> dict[str, str]:
    lines = checked_file(bundle).read_text(encoding="utf-8").splitlines()
    return dict(line.split("\t", 1) for line in lines if "\t" in line)

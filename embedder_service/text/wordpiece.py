"""BERT's uncased WordPiece tokenizer, as all-MiniLM-L6-v2 was trained with:
lower-case, accents stripped, split on white space and punctuation (each CJK
character a word), then each word into the longest pieces of the vocabulary
(``##`` marks a piece inside a word); a word that cannot be split is
``[UNK]``."""

from __future__ import annotations

import unicodedata
from pathlib import Path

MAX_WORD_CHARS = 100  # longer words are [UNK], as BERT's tokenizer does


def _is_punctuation(ch: str) -> bool:
    code = ord(ch)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(code: int) -> bool:
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0x20000 <= code <= 0x2A6DF
        or 0x2A700 <= code <= 0x2B81F
        or 0x2B820 <= code <= 0x2CEAF
        or 0xF900 <= code <= 0xFAFF
        or 0x2F800 <= code <= 0x2FA1F
    )


def basic_words(text: str) -> list[str]:
    """Lower-cased words without accents, punctuation marks as words of their own."""
    cleaned = []
    for ch in text:
        code = ord(ch)
        control = code in (0, 0xFFFD) or unicodedata.category(ch) in ("Cc", "Cf")
        if control and ch not in "\t\n\r":
            continue
        if ch.isspace() or unicodedata.category(ch) == "Zs":
            cleaned.append(" ")
        elif _is_cjk(code):
            cleaned.append(f" {ch} ")
        else:
            cleaned.append(ch)
    words: list[str] = []
    for token in "".join(cleaned).lower().split():
        token = "".join(
            c for c in unicodedata.normalize("NFD", token) if unicodedata.category(c) != "Mn"
        )
        current = ""
        for ch in token:
            if _is_punctuation(ch):
                if current:
                    words.append(current)
                words.append(ch)
                current = ""
            else:
                current += ch
        if current:
            words.append(current)
    return words


class WordPiece:
    def __init__(self, vocab_file: Path) -> None:
        tokens = vocab_file.read_text(encoding="utf-8").splitlines()
        self.ids = {token: i for i, token in enumerate(tokens)}
        self.cls, self.sep = self.ids["[CLS]"], self.ids["[SEP]"]
        self.unk, self.pad = self.ids["[UNK]"], self.ids["[PAD]"]

    def pieces(self, word: str) -> list[int]:
        if len(word) > MAX_WORD_CHARS:
            return [self.unk]
        out: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                found = self.ids.get(piece)
                if found is not None:
                    break
                end -= 1
            if found is None:
                return [self.unk]
            out.append(found)
            start = end
        return out

    def encode(self, text: str, max_tokens: int) -> list[int]:
        """[CLS] the pieces [SEP], cut to ``max_tokens`` in all."""
        ids = [i for word in basic_words(text) for i in self.pieces(word)]
        return [self.cls, *ids[: max_tokens - 2], self.sep]

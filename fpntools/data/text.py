"""Text corpora for language modelling: WikiText token files, character-level corpora, token windows.

* :func:`load_wikitext` reads ``wiki.train.tokens`` / ``wiki.valid.tokens`` / ``wiki.test.tokens`` (WikiText-2
  and WikiText-103 share the format) at word level (whitespace tokens, ``<eos>`` appended to every
  non-empty line, vocabulary from the training split) or character level.
* :func:`load_python_docs_corpus` is an offline character-level corpus that ships with every CPython:
  the reference-manual topics of ``pydoc_data.topics`` (about 465k characters of English technical prose).
* :class:`TokenWindows` turns a 1-D id tensor into ``(input, next-token target)`` windows for training.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from fpntools.errors import UserInputError

__all__ = ["Vocabulary", "TextCorpus", "TokenWindows", "load_wikitext", "load_char_corpus", "load_python_docs_corpus"]

EOS, UNK = "<eos>", "<unk>"


class Vocabulary:
    """Bijection between tokens and ids ``0..len-1`` (specials first, then by decreasing frequency)."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if len(set(tokens)) != len(tokens):
            raise ValueError("vocabulary tokens must be unique")
        self.itos = list(tokens)
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(cls, tokens: Iterable[str], specials: Sequence[str] = ()) -> "Vocabulary":
        counts = Counter(tokens)
        rest = sorted((t for t in counts if t not in specials), key=lambda t: (-counts[t], t))
        return cls([*specials, *rest])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Iterable[str], unk: str | None = None) -> Tensor:
        """Ids of ``tokens``; unknown tokens map to ``unk`` when given, else raise naming the token."""
        unk_id = self.stoi.get(unk) if unk is not None else None
        out = []
        for t in tokens:
            i = self.stoi.get(t, unk_id)
            if i is None:
                raise UserInputError(f"token {t!r} is not in the vocabulary of {len(self)} tokens")
            out.append(i)
        return torch.tensor(out, dtype=torch.long)

    def decode(self, ids: Iterable[int], sep: str = "") -> str:
        return sep.join(self.itos[int(i)] for i in ids)


@dataclass
class TextCorpus:
    """Token ids of the three splits and their vocabulary."""

    train: Tensor
    valid: Tensor
    test: Tensor
    vocab: Vocabulary
    source: str = ""


def _read(path: Path) -> str:
    if not path.is_file():
        raise UserInputError(f"text file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{path} is not UTF-8 text: {exc}") from None
    if not text.strip():
        raise UserInputError(f"{path} is empty")
    return text


def _find(root: Path, split: str, suffixes: Sequence[str]) -> Path:
    for suf in suffixes:
        p = root / f"wiki.{split}.{suf}"
        if p.is_file():
            return p
    raise UserInputError(f"WikiText directory {root} lacks wiki.{split}.{suffixes[0]}")


def load_wikitext(root: str | Path, level: str = "word") -> TextCorpus:
    """WikiText-103 (or -2) from ``root`` holding ``wiki.{train,valid,test}.tokens`` (or ``.raw``).

    ``level="word"``: each non-empty line becomes its whitespace tokens plus ``<eos>``; the vocabulary is
    built from the training split and other splits map unseen words to ``<unk>`` (WikiText already marks
    rare words ``<unk>``). ``level="char"``: characters (newlines kept); the character set is taken from all
    three splits (a closed alphabet, as usual for character-level benchmarks).
    """
    root = Path(root)
    if not root.is_dir():
        raise UserInputError(f"WikiText directory not found: {root}")
    if level not in ("word", "char"):
        raise ValueError(f"level must be 'word' or 'char', got {level!r}")
    texts = {s: _read(_find(root, s, ("tokens", "raw"))) for s in ("train", "valid", "test")}
    if level == "char":
        vocab = Vocabulary.build(texts["train"] + texts["valid"] + texts["test"])
        ids = {s: vocab.encode(t) for s, t in texts.items()}
        return TextCorpus(ids["train"], ids["valid"], ids["test"], vocab, f"wikitext:{root}:char")

    def words(text: str) -> list[str]:
        out: list[str] = []
        for line in text.splitlines():
            toks = line.split()
            if toks:
                out.extend(toks)
                out.append(EOS)
        return out

    w = {s: words(t) for s, t in texts.items()}
    vocab = Vocabulary.build(w["train"], specials=(EOS, UNK))
    ids = {s: vocab.encode(t, unk=UNK) for s, t in w.items()}
    return TextCorpus(ids["train"], ids["valid"], ids["test"], vocab, f"wikitext:{root}:word")


def load_char_corpus(text: str, fractions: tuple[float, float] = (0.9, 0.05), source: str = "") -> TextCorpus:
    """Character-level corpus from a string: contiguous train / valid / test splits by ``fractions``
    (train, valid; the rest is test). The vocabulary covers every character of the whole text."""
    if len(text) < 100:
        raise UserInputError(f"text of {len(text)} characters is too short for a corpus")
    a, b = fractions
    if not (0 < a < 1 and 0 < b < 1 and a + b < 1):
        raise ValueError(f"fractions must be positive and sum to less than 1, got {fractions}")
    vocab = Vocabulary.build(text)
    ids = vocab.encode(text)
    n1, n2 = int(a * len(ids)), int((a + b) * len(ids))
    return TextCorpus(ids[:n1], ids[n1:n2], ids[n2:], vocab, source)


def load_python_docs_corpus(max_chars: int | None = None) -> TextCorpus:
    """The CPython reference-manual topics (``pydoc_data.topics.topics``, shipped with Python; topics in
    sorted order, separated by blank lines) as a character-level corpus."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    if max_chars is not None:
        text = text[:max_chars]
    return load_char_corpus(text, source="pydoc_data.topics (CPython reference manual topics)")


class TokenWindows(Dataset):
    """Non-overlapping (or ``stride``-spaced) windows ``(ids[t:t+L], ids[t+1:t+L+1])`` of a 1-D id tensor."""

    def __init__(self, ids: Tensor, seq_len: int, stride: int | None = None) -> None:
        if ids.dim() != 1:
            raise UserInputError(f"token ids must be 1-D, got shape {tuple(ids.shape)}")
        if seq_len < 1:
            raise ValueError(f"seq_len must be at least 1, got {seq_len}")
        if len(ids) < seq_len + 1:
            raise UserInputError(f"{len(ids)} tokens are too few for one window of length {seq_len} (+1 target)")
        self.ids, self.seq_len = ids, seq_len
        self.stride = stride or seq_len
        self.starts = torch.arange(0, len(ids) - seq_len, self.stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i):
        if isinstance(i, Tensor) and i.dim() == 1:  # batched indexing (used by the trainer)
            idx = self.starts[i][:, None] + torch.arange(self.seq_len + 1)
            w = self.ids[idx]
            return w[:, :-1], w[:, 1:]
        s = int(self.starts[i])
        w = self.ids[s : s + self.seq_len + 1]
        return w[:-1], w[1:]

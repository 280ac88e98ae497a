"""Dataset loaders on tiny files written by the tests: CIFAR-10 batches, image folders, WikiText."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from fpntools.data import (
    TokenWindows,
    load_char_corpus,
    load_cifar10,
    load_digits,
    load_image_folder,
    load_python_docs_corpus,
    load_wikitext,
)
from fpntools.data.cifar import read_cifar_batch
from fpntools.errors import UserInputError


def _write_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).tolist()
    with open(path, "wb") as fh:
        pickle.dump({b"batch_label": b"x", b"labels": labels, b"data": data, b"filenames": [b"a"] * n}, fh)
    return data, labels


def test_cifar10_python_batches(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    parts = [_write_batch(root / f"data_batch_{i}", 3, i) for i in range(1, 6)]
    _write_batch(root / "test_batch", 2, 9)
    x, y = load_cifar10(tmp_path, "train")
    assert x.shape == (15, 3, 32, 32) and y.shape == (15,) and x.dtype == torch.float32
    data0, labels0 = parts[0]
    assert torch.allclose(x[0, 1, 0, 0], torch.tensor(data0[0, 1024] / 255.0, dtype=torch.float32))  # G plane
    assert y[:3].tolist() == labels0
    xt, yt = load_cifar10(root, "test")
    assert xt.shape == (2, 3, 32, 32)


def test_cifar10_errors(tmp_path):
    with pytest.raises(UserInputError, match="not found"):
        load_cifar10(tmp_path / "nope")
    (tmp_path / "data_batch_1").write_bytes(b"garbage")
    with pytest.raises(UserInputError, match="lacks data_batch_2"):
        load_cifar10(tmp_path)
    with pytest.raises(UserInputError, match="not a readable CIFAR-10"):
        read_cifar_batch(tmp_path / "data_batch_1")
    with open(tmp_path / "bad_shape", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(UserInputError, match=r"expected \(N, 3072\)"):
        read_cifar_batch(tmp_path / "bad_shape")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "evil", "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": []}, fh)
    with pytest.raises(UserInputError, match="refusing to load"):
        read_cifar_batch(tmp_path / "evil")


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, n in (("cat", 2), ("dog", 3)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    x, y, classes = load_image_folder(tmp_path)
    assert classes == ["cat", "dog"] and x.shape == (5, 3, 6, 5) and y.tolist() == [0, 0, 1, 1, 1]
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    xg, _, _ = load_image_folder(tmp_path, size=(4, 4), grayscale=True)
    assert xg.shape == (5, 1, 4, 4)
    Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(tmp_path / "dog" / "big.png")
    with pytest.raises(UserInputError, match="pass size"):
        load_image_folder(tmp_path)
    (tmp_path / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(UserInputError, match="cannot read image"):
        load_image_folder(tmp_path, size=(4, 4))
    with pytest.raises(UserInputError, match="no class sub-directories"):
        load_image_folder(tmp_path / "cat")


def test_wikitext_word_and_char(tmp_path):
    (tmp_path / "wiki.train.tokens").write_text(" = Title = \n\n the cat sat on the mat . \n the <unk> ran \n")
    (tmp_path / "wiki.valid.tokens").write_text(" the dog sat \n")
    (tmp_path / "wiki.test.tokens").write_text(" the cat \n")
    c = load_wikitext(tmp_path)
    v = c.vocab
    assert v.itos[:2] == ["<eos>", "<unk>"] and v.itos[2] == "the"
    assert v.decode(c.train[:4], " ") == "= Title = <eos>"
    assert v.decode(c.valid, " ") == "the <unk> sat <eos>"  # unseen 'dog' -> <unk>
    assert len(c.train) == 4 + 8 + 4
    cc = load_wikitext(tmp_path, level="char")
    assert cc.vocab.decode(cc.test) == " the cat \n"
    with pytest.raises(UserInputError, match="lacks wiki.valid.tokens"):
        (tmp_path / "wiki.valid.tokens").unlink()
        load_wikitext(tmp_path)
    (tmp_path / "wiki.valid.tokens").write_text("   \n")
    with pytest.raises(UserInputError, match="is empty"):
        load_wikitext(tmp_path)


def test_char_corpus_and_windows():
    c = load_python_docs_corpus(max_chars=5000)
    assert len(c.train) + len(c.valid) + len(c.test) == 5000
    assert c.vocab.decode(c.train[:20]) == c.vocab.decode(c.train)[:20]
    w = TokenWindows(c.train, 16)
    x, y = w[0]
    assert torch.equal(x[1:], y[:-1])
    xb, yb = w[torch.tensor([0, 2])]
    assert xb.shape == (2, 16) and torch.equal(xb[1], w[2][0])
    with pytest.raises(UserInputError, match="too few"):
        TokenWindows(c.train[:5], 16)
    with pytest.raises(UserInputError, match="too short"):
        load_char_corpus("abc")


def test_digits_split():
    s = load_digits(flat=False, test_fraction=0.2, seed=3)
    assert s.x_train.shape[1:] == (1, 8, 8) and len(s.y_train) + len(s.y_test) == 1797
    assert abs(float(s.x_train.mean())) < 1e-5

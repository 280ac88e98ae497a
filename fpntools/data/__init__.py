"""Dataset loaders for the model zoo: files users bring (CIFAR-10 python batches, image folders,
WikiText token files) and small corpora shipped with installed packages (scikit-learn digits, the Python
documentation topics used for character-level language modelling).

Loaders return plain tensors or :class:`torch.utils.data.Dataset` objects and raise
:class:`~fpntools.errors.UserInputError` naming the file and the problem when the input is missing or malformed.
"""

from fpntools.data.cifar import load_cifar10
from fpntools.data.digits import Split, load_digits
from fpntools.data.images import load_image_folder
from fpntools.data.text import (
    TokenWindows,
    Vocabulary,
    load_char_corpus,
    load_python_docs_corpus,
    load_wikitext,
)

__all__ = [
    "Split",
    "TokenWindows",
    "Vocabulary",
    "load_char_corpus",
    "load_cifar10",
    "load_digits",
    "load_image_folder",
    "load_python_docs_corpus",
    "load_wikitext",
]

"""The pretrained model shipped in the package.

A small inductive CpG Transformer (no cell table, no DNA network; input summaries, induced attention
across cells) trained by ``scripts/train_pretrained.py`` on simulated data sets only. It applies to
any store without training: wherever a checkpoint path is accepted, the name ``pretrained`` means
this file (``cpgformer impute STORE pretrained``, ``cpgformer impute STORE --pretrained``,
``cpgformer train STORE --init-from pretrained``, ``cpgformer benchmark STORE --checkpoint
pretrained``). A file or folder actually named ``pretrained`` in the working directory wins.

Its card (training data, budget, held-out scores) is ``card.json`` next to the weights and
docs/pretrained.md.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from cpgformer.errors import UsageError

NAME = "pretrained"
"""The name that stands for the shipped model wherever a checkpoint path is accepted."""
WEIGHTS = "cpgformer-pretrained.pt"
CARD = "card.json"


def _here() -> Path:
    return Path(str(resources.files(__name__)))


def path() -> Path:
    """The shipped model file (a plain cpgformer model file, :mod:`cpgformer.nn.serialize`)."""
    file = _here() / WEIGHTS
    if not file.is_file():
        raise UsageError(
            f"this installation of cpgformer carries no pretrained model ({WEIGHTS} is missing "
            "from the package): reinstall cpgformer, or train one with scripts/train_pretrained.py"
        )
    return file


def resolve(value: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """``value``, or the shipped model's file when ``value`` is :data:`NAME` (and no file of that
    name is in the way)."""
    if os.fspath(value) == NAME and not os.path.exists(NAME):
        return str(path())
    return value


def card() -> dict[str, Any]:
    """The model card: how the shipped model was trained and what it scored on held-out data."""
    file = _here() / CARD
    if not file.is_file():
        raise UsageError(
            f"this installation of cpgformer carries no pretrained model card ({CARD})"
        )
    return json.loads(file.read_text(encoding="utf-8"))

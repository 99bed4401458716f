"""The model, data and training configs of a run, layered: built-in defaults < a JSON file (sections
``model``/``data``/``training`` or flat keys; a run's ``config.json`` is one) < given values."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any

from cpgformer import pretrained
from cpgformer.data.config import DataConfig
from cpgformer.errors import InputError, UsageError
from cpgformer.nn import ModelConfig
from cpgformer.training.config import TrainConfig
from cpgformer.training.schedule import new_run_defaults

log = logging.getLogger(__name__)

SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "training": TrainConfig}
SKIP = {"model": {"n_cells"}, "data": {"seed"}, "training": set()}
"""Fields that are not parameters: the store's cell count; the data seed (the training seed)."""
_RUN_RECORD = {"store", "store_fingerprint", "init_from", "schedule_plan"}

Sections = dict[str, dict[str, Any]]


def parameter_names(section: str) -> set[str]:
    return {f.name for f in dataclasses.fields(SECTIONS[section])} - SKIP[section]


def read_config_file(path: str) -> Sections:
    """The parameters of a JSON configuration file, by section (one line naming a bad file)."""
    try:
        with open(path) as fh:
            raw = json.load(fh)
    except OSError as exc:
        raise InputError(path, None, f"cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, exc.lineno, f"invalid JSON: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise InputError(path, None, "expected a JSON object")
    out: Sections = {s: {} for s in SECTIONS}
    known = {s: parameter_names(s) for s in SECTIONS}
    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, dict):
            for k, v in value.items():
                if k in known[key]:
                    out[key][k] = v
                elif k == "seed":
                    out["training"]["seed"] = v
                # other keys (resolved split, n_cells, ...) are what a run's config.json records
            continue
        if key in _RUN_RECORD:
            continue  # what a run's config.json records besides its parameters
        owners = [s for s in SECTIONS if key in known[s]]
        if not owners:
            raise InputError(path, None, f"unknown parameter {key!r}")
        out[owners[0]][key] = value
    return out


def build_configs(
    given: Mapping[str, Mapping[str, Any]],
    n_cells: int,
    has_fasta: bool,
    config_file: str | None = None,
) -> tuple[ModelConfig, DataConfig, TrainConfig, dict[str, Any]]:
    """(model, data, training configs, explicitly given model parameters) from ``config_file``
    overridden by ``given`` (by section). Without a DNA window, the model uses DNA when the store
    has a FASTA; the data seed is the training seed; named chromosomes are used as given."""
    values: Sections = read_config_file(config_file) if config_file else {s: {} for s in SECTIONS}
    given_model: dict[str, Any] = dict(values["model"])
    for section, params in given.items():
        values[section].update(params)
        if section == "model":
            given_model.update(params)
    if "dna_window" not in values["model"]:
        values["model"]["dna_window"] = 1001 if has_fasta else 0
        if not has_fasta:
            log.info("the store has no FASTA: training without DNA (--dna-window 0)")
    schedule = values["training"].get("schedule", "adaptive")
    for section, defaults in new_run_defaults(n_cells, schedule).items():
        for name, value in defaults.items():
            values[section].setdefault(name, value)
    values["data"]["seed"] = values["training"].get("seed", 0)
    for name in ("val_chromosomes", "test_chromosomes"):
        if name in values["data"]:
            values["data"][name] = tuple(values["data"][name] or ())
            # chromosomes named by the user are used as given (an unknown one is an error)
            values["data"].setdefault("split", "chromosomes")
    try:
        model = ModelConfig(n_cells=n_cells, **values["model"])
        data = DataConfig(**values["data"])
        training = TrainConfig(**values["training"])
    except TypeError as exc:
        raise UsageError(str(exc)) from None
    return model, data, training, given_model


AUTO_INIT = "auto"
"""``--init-from auto`` (the default): the pretrained model where it applies, else from scratch."""
NO_INIT = "none"
"""``--init-from none``: train from scratch."""
RUNTIME_MODEL_PARAMETERS = frozenset({"attention_impl"})
"""Model parameters that do not change the architecture (fine-tuning keeps them)."""


def resolve_init_from(
    value: str | None,
    given_model: Mapping[str, Any],
    training: TrainConfig,
    has_fasta: bool,
    resume: bool = False,
) -> tuple[str | None, str]:
    """(checkpoint a new run starts from, or None for from scratch; why, for the log).

    An explicit ``value`` is used as given (``none`` = from scratch). ``auto`` (or None): the
    shipped pretrained model for a new run on a store without a FASTA, with the adaptive schedule
    and no architecture parameters given; otherwise from scratch -- a store with a FASTA gets the
    DNA network (which the pretrained model does not have), ``--schedule published`` the published
    model, and given model parameters their architecture.
    """
    if value not in (None, AUTO_INIT):
        return (None, "") if value == NO_INIT else (value, "")
    if resume:
        return None, ""
    if has_fasta:
        return None, "the store has a FASTA: training from scratch with the DNA network"
    if training.schedule == "published":
        return None, "--schedule published: the published model from scratch"
    architecture = sorted(set(given_model) - RUNTIME_MODEL_PARAMETERS)
    if architecture:
        return None, f"model parameters given ({', '.join(architecture)}): training from scratch"
    try:
        pretrained.path()
    except UsageError as exc:
        return None, f"{exc}; training from scratch"
    return pretrained.NAME, (
        "starting from the pretrained model (the default for a store without a FASTA; "
        "--init-from none trains from scratch)"
    )

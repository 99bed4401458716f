"""Our model reproduces the original implementation's outputs on the seven golden cases."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cpgformer.legacy import from_original, original_forward, to_original
from cpgformer.nn.original_port import port_forward

pytestmark = pytest.mark.usefixtures("one_thread")


CASES = [
    "axial_binary",
    "2D_binary",
    "intracell_binary",
    "intercell_binary",
    "none_binary",
    "axial_continuous",
    "axial_binary_gelu_w11",
]


def _load(shared: Path, case: str) -> dict:
    return torch.load(shared / "golden" / f"{case}.pt", weights_only=True)


@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("case", CASES)
def test_golden_logits(shared: Path, case: str, impl: str) -> None:
    golden = _load(shared, case)
    model = from_original(golden["state_dict"], golden["hparams"]).eval()
    assert model.config.mode == golden["hparams"]["mode"]
    model.attention_impl = impl
    with torch.no_grad():
        logits = original_forward(model, **golden["inputs"])
    assert logits.shape == golden["logits"].shape
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, golden["logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_to_original_round_trip(shared: Path, case: str) -> None:
    golden = _load(shared, case)
    model = from_original(golden["state_dict"], golden["hparams"])
    back = to_original(model)
    assert set(back) == set(golden["state_dict"])
    for key, value in golden["state_dict"].items():
        assert torch.equal(back[key], value), key


@pytest.mark.parametrize("case", CASES)
def test_golden_logits_original_formulation_port(shared: Path, case: str) -> None:
    """Third cross-check: the port of the original's formulation gives the same logits."""
    golden = _load(shared, case)
    model = from_original(golden["state_dict"], golden["hparams"]).eval()
    inputs = golden["inputs"]
    states = inputs["states"]
    if model.config.data_mode == "binary":
        states = states.long()
    with torch.no_grad():
        logits = port_forward(
            model, states, inputs["pos"], inputs["cells"], dna=inputs["dna"].long()
        )
    torch.testing.assert_close(logits, golden["logits"], atol=1e-5, rtol=0)

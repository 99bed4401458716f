"""Compiled inference (opt-in) equals the reference path, and steps aside where it must."""

from __future__ import annotations

import warnings

import pytest
import torch

from cpgformer.nn import CpGTransformer, ModelConfig, compiled


@pytest.fixture
def compiled_on(monkeypatch):
    monkeypatch.setattr(compiled, "ENABLED", True)
    calls = []
    original = compiled.layer_inference

    def spy(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(compiled, "layer_inference", spy)
    return calls


def _model(mode: str, dtype: torch.dtype, cells: int = 6, **extra) -> CpGTransformer:
    torch.manual_seed(0)
    config = ModelConfig(n_cells=cells, dna_window=0, mode=mode, **extra)
    return CpGTransformer(config).to(dtype).eval()


def _inputs(length: int, cells: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(length)
    x = torch.randn(1, length, cells, 64, generator=g, dtype=dtype)
    positions = torch.cumsum(torch.randint(1, 300, (1, length), generator=g), dim=1)
    return x, positions


@pytest.mark.parametrize("mode", ["axial", "intracell", "intercell", "none"])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_compiled_inference_equals_reference(compiled_on, mode, dtype, tol):
    model = _model(mode, dtype)
    for length in (5, 37):  # shorter than the window (21 sites), and with interior sites
        x, positions = _inputs(length, 6, dtype)
        with torch.no_grad():
            fast = model.transform(x, positions, "fast")
            reference = model.transform(x, positions, "reference")
        assert (fast - reference).abs().max().item() <= tol
    assert len(compiled_on) == 2 * model.config.n_layers  # it ran, every layer


def test_compiled_inference_gelu_and_no_layernorm(compiled_on):
    model = _model("axial", torch.float64, activation="gelu", layernorm=False)
    x, positions = _inputs(23, 6, torch.float64)
    with torch.no_grad():
        fast = model.transform(x, positions, "fast")
        reference = model.transform(x, positions, "reference")
    assert (fast - reference).abs().max().item() <= 1e-10
    assert compiled_on


def test_compiled_path_steps_aside(compiled_on):
    model = _model("axial", torch.float32)
    x, positions = _inputs(9, 6, torch.float32)
    model.transform(x, positions, "fast")  # gradients enabled: eager training path
    with torch.no_grad():
        model.train()
        model.transform(x, positions, "fast")  # train mode (dropout): eager
        model.eval()
        seen = []
        handle = model.layers[0].attentions[0].register_forward_hook(lambda *a: seen.append(1))
        model.transform(x, positions, "fast")  # hooks must see the real modules: eager
        handle.remove()
        assert seen
        wide = _model("axial", torch.float32, cells=compiled.MAX_CELLS + 1)
        wx, wp = _inputs(9, compiled.MAX_CELLS + 1, torch.float32)
        wide.transform(wx, wp, "fast")  # more cells than compiled loops serve: eager
        two_d = _model("2D", torch.float32)
        two_d.transform(x, positions, "fast")  # 2D mode is not compiled
    assert not compiled_on
    with torch.no_grad():
        model.transform(x, positions, "fast")
    assert compiled_on


def test_compile_failure_falls_back_to_eager(monkeypatch):
    from torch._dynamo.exc import BackendCompilerFailed

    def broken(*args):
        raise BackendCompilerFailed(lambda *a: None, RuntimeError("no C++ compiler"), None)

    monkeypatch.setattr(compiled, "ENABLED", None)
    monkeypatch.setenv("CPGFORMER_COMPILE", "1")
    monkeypatch.setattr(compiled, "_FAILED", [])
    monkeypatch.setattr(compiled, "layer_inference", broken)
    model = _model("axial", torch.float64)
    x, positions = _inputs(11, 6, torch.float64)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model.transform(x, positions, "fast")
        reference = model.transform(x, positions, "reference")
    assert (out - reference).abs().max().item() <= 1e-10
    assert any("compiled inference unavailable" in str(w.message) for w in caught)
    assert not compiled.available() and not compiled.enabled()


def test_compiled_is_opt_in(monkeypatch):
    monkeypatch.setattr(compiled, "ENABLED", None)
    monkeypatch.delenv("CPGFORMER_COMPILE", raising=False)
    assert not compiled.enabled()

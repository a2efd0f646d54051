"""The backend registry: one backend per kind of model, same-shaped data from both."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from fraqat.backends import BACKENDS, backend_of
from fraqat.backends.embedded import EmbeddedBackend
from fraqat.backends.pipeline import PipelineBackend
from fraqat.errors import ParamsError
from fraqat.models.registry import REGISTRY
from fraqat.params import MODELS, Params, load_params
from fraqat.train.trainer import DistillData
from tests.tiny import make_tiny_project

PIPELINE_PROFILE = Path(__file__).resolve().parents[2] / "profiles" / "pipeline-tiny.yaml"


def test_every_model_has_a_kind_with_a_backend():
    assert set(MODELS) == set(REGISTRY)
    assert {spec.kind for spec in REGISTRY.values()} == set(BACKENDS)
    assert isinstance(backend_of(Params()), EmbeddedBackend)  # the default
    for name in MODELS:
        kind = REGISTRY[name].kind
        assert backend_of(Params(model=name)) is BACKENDS[kind]
    assert isinstance(backend_of(Params(model="sana-600m")), PipelineBackend)


def test_an_unknown_model_is_one_line():
    with pytest.raises(ParamsError, match="model: 'sdxl' is not known"):
        backend_of(Params.model_construct(model="sdxl"))


def test_the_embedded_backend_needs_no_inputs_and_keeps_the_digit_prompts():
    backend = EmbeddedBackend()
    backend.check_inputs(Params(model_path="/nowhere", prompts_path="/nowhere"))
    prompts = backend.prompts(Params())
    assert len(prompts) == 10 and prompts[3] == "a handwritten digit three"


def _sets(backend, params, teacher) -> dict[str, DistillData]:
    return {"train": backend.training_data(params), "probe": backend.probe_set(params, teacher),
            "validation": backend.validation_set(params, teacher)}


def _check(sets: dict[str, DistillData], teacher, n_prompts: int, sizes: dict[str, int]):
    shape = None
    for name, d in sets.items():
        assert len(d) == sizes[name], name
        assert d.x_t.shape[1:] == teacher.sample_shape and d.teacher_v.shape == d.x_t.shape
        assert d.t.shape == d.labels.shape == (len(d),) and d.t.dtype == torch.float32
        assert d.teacher_v.dtype == torch.float32 and torch.isfinite(d.teacher_v).all()
        assert 0 <= float(d.t.min()) and float(d.t.max()) <= 1
        assert int(d.labels.max()) < n_prompts and d.labels.dtype == torch.int64
        shape = shape or d.x_t.shape[1:]
        assert d.x_t.shape[1:] == shape
    # the model's own conditioning rows cover every label: no digit prompts forced on it
    cond = teacher.prompt_conditioning()
    assert all(len(c) == n_prompts for c in cond)


def test_the_embedded_backend_gives_distill_sets(tmp_path, monkeypatch):
    from fraqat.models.registry import load_teacher

    root = make_tiny_project(tmp_path)
    monkeypatch.chdir(root)
    params = load_params("params.yaml")
    backend = backend_of(params)
    teacher = load_teacher("data/teacher")
    sets = _sets(backend, params, teacher)
    c = params.calibration
    _check(sets, teacher, 10, {"train": c.num_samples, "probe": params.train.probe_samples,
                                "validation": c.validation_samples})
    assert sets["train"].target_v is not None  # the flow-matching target, embedded only
    assert backend.probe_description(params) == "fixed noised held-out images."


@pytest.mark.slow
def test_the_pipeline_backend_gives_the_same_shaped_sets(tiny_pipeline_dir, tmp_path,
                                                         monkeypatch):
    """A tiny random-weight Sana pipeline through the same stage code as the default."""
    from fraqat.models.registry import load_teacher
    from fraqat.stages import calibrate, pretrain, teacher

    monkeypatch.chdir(tmp_path)
    raw = yaml.safe_load(PIPELINE_PROFILE.read_text())
    raw.update(model="sana-600m", model_path=str(tiny_pipeline_dir("sana")))
    raw["calibration"].update(num_samples=8, validation_samples=4)
    raw["train"]["probe_samples"] = 4
    raw["eval"]["steps"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    params = load_params("params.yaml")
    backend = backend_of(params)
    backend.check_inputs(params)
    for stage in (pretrain, calibrate, teacher):
        stage.run(params)
    model = load_teacher("data/teacher")
    prompts = backend.prompts(params)
    _check(_sets(backend, params, model), model, len(prompts),
           {"train": 8, "probe": 4, "validation": 4})
    assert "sana-600m's own sampling trajectories" in backend.probe_description(params)

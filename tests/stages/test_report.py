"""The ``report`` stage on fake eval/train files, and evaluate -> report end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from fraqat import paths
from fraqat.errors import FraqatError
from fraqat.io import save_tensors, write_json
from fraqat.params import Params
from fraqat.report.summary import CSV_COLUMNS
from fraqat.stages import report

METHODS = ["ptq", "qat", "fraqat", "int-progressive"]
N_IMAGES, N_ITEMS = 20, 40


def _params(**kw) -> Params:
    return Params(methods=METHODS, seeds=[0, 1], eval={"num_images": N_IMAGES}, **kw)


def _write_run(method: str, seed: int, fid: float, heldout: float, mse_scale: float,
               bits: tuple[float | None, float | None] = (4.0, 8.0)) -> None:
    """An eval JSON plus a samples file whose per-item values give the JSON's means."""
    g = torch.Generator().manual_seed(hash((method, seed)) % 2**31)
    fp = torch.linspace(-1, 1, N_IMAGES * 64).view(N_IMAGES, 1, 8, 8)
    samples = fp + mse_scale * torch.randn(fp.shape, generator=g)
    sq_err = heldout * (1 + 0.1 * torch.randn(N_ITEMS, generator=g)).abs()
    mse = float((samples.clamp(-1, 1) - fp).pow(2).mean())
    save_tensors(paths.samples_path(method, seed),
                 {"samples": samples, "labels": torch.arange(N_IMAGES) % 10,
                  "heldout_sq_err": sq_err})
    write_json(paths.eval_metrics(method, seed), {
        "method": method, "seed": seed, "weight_bits": bits[0], "act_bits": bits[1],
        "fid": fid, "feature_space": "classifier", "prompt_accuracy": 0.9,
        "teacher_mse": mse, "teacher_psnr": 10 * np.log10(4 / mse) if mse else None,
        "heldout_distill_loss": float(sq_err.mean()),
        "model_size_mb": 0.1 if bits[0] else 0.76, "num_images": N_IMAGES})


def _write_train(method: str, seed: int) -> None:
    write_json(paths.train_metrics(method, seed), {"method": method, "seed": seed,
                                                   "final_loss": 0.01, "steps": 50,
                                                   "wall_seconds": 10.0 + seed})
    steps = np.arange(0, 50, 5)
    bits = np.maximum(4.0, 8.0 - steps / 10) if method == "fraqat" else np.full(len(steps), 4.0)
    pd.DataFrame({"step": steps, "loss": 0.1 * np.exp(-steps / 20), "bits": bits,
                  "lr": 1e-4}).to_csv(paths.train_log(method, seed), sep="\t", index=False)


def _fake_project(fraqat_fids: tuple[float, float]) -> None:
    _write_run("fp", 0, 90.0, 0.0, 0.0, bits=(None, None))
    fids = {"ptq": (150.0, 150.0), "qat": (100.0, 102.0), "fraqat": fraqat_fids,
            "int-progressive": (101.0, 99.0)}
    heldout = {"ptq": 0.05, "qat": 0.010, "fraqat": 0.008, "int-progressive": 0.011}
    for method in METHODS:
        for seed in (0, 1):
            _write_run(method, seed, fids[method][seed], heldout[method], 0.05 + 0.01 * seed)
            _write_train(method, seed)
    write_json(paths.EVAL_REPORTS / "noise.json", {
        "method": "noise", "seed": None, "weight_bits": None, "act_bits": None, "fid": 700.0,
        "feature_space": "classifier", "prompt_accuracy": 0.1, "teacher_mse": 0.55,
        "teacher_psnr": 8.6, "heldout_distill_loss": None, "model_size_mb": None,
        "num_images": N_IMAGES})


def test_report_reproduced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_project(fraqat_fids=(95.0, 96.8))  # 5 % lower on both seeds
    report.run(_params())

    table = pd.read_csv(paths.COMPARISON_CSV)
    assert list(table.columns) == CSV_COLUMNS
    assert table["method"].tolist() == ["fp", *METHODS, "noise"]
    row = table.set_index("method")
    assert row.loc["fraqat", "fid_delta_pct_vs_qat"] == pytest.approx(100 * (95.9 - 101) / 101)
    assert row.loc["ptq", "fid_delta_pct_vs_qat"] == pytest.approx(100 * (150 - 101) / 101)
    assert row.loc["qat", "fid_delta_pct_vs_qat"] == 0
    assert row.loc["qat", "fid_std"] == pytest.approx(np.std([100, 102], ddof=1))
    assert row.loc["qat", "bits"] == "W4A8" and row.loc["fp", "bits"] == "FP32"
    assert row.loc["noise", "fid_mean"] == 700.0
    assert row.loc["fraqat", "train_wall_s"] == pytest.approx(10.5)

    md = paths.COMPARISON_MD.read_text()
    assert "FID 4–7 % lower than standard QAT on diffusion transformers of 0.6–12 B" in md
    assert "a reduction of at least 4 % on the mean" in md and "Verdict" not in md
    assert "On the tiny-sana teacher (width 64 × 2 layers) on 8×8 digits, W4A8" in md
    assert "`fraqat` / `qat` on the sensitive held-out distillation loss: ×0." in md

    metrics = json.loads(paths.METRICS.read_text())
    for key in ("fid.fraqat", "fid.qat", "heldout_loss.fraqat", "heldout_loss.qat", "fid.noise",
                "teacher_mse.fraqat", "test.heldout_loss.ttest_p", "test.teacher_mse.bootstrap_p",
                "test.heldout_loss.ci_low_pct", "test.heldout_loss.ci_high_pct"):
        assert key in metrics, key
    # The headline only (what `dvc exp show` carries); every number is in details.json.
    details = json.loads(report.DETAILS.read_text())
    assert metrics == {k: v for k, v in details.items() if k.startswith(report.HEADLINE)}
    assert "teacher_mse_std.qat" in details and "teacher_mse_std.qat" not in metrics
    assert len(metrics) <= 60
    assert metrics["claim.reproduced"] is True
    ev = [json.loads(paths.eval_metrics(m, s).read_text()) for m in ("fraqat", "qat")
          for s in (0, 1)]
    expected = stats.ttest_rel([ev[0]["heldout_distill_loss"], ev[1]["heldout_distill_loss"]],
                               [ev[2]["heldout_distill_loss"], ev[3]["heldout_distill_loss"]])
    assert metrics["test.heldout_loss.ttest_p"] == pytest.approx(expected.pvalue)

    for name in ("fid.png", "training.png", "samples.png"):
        data = (paths.PLOTS / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_report_not_reproduced_and_missing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_project(fraqat_fids=(103.0, 105.0))
    paths.eval_metrics("int-progressive", 1).unlink()
    report.run(_params(bits=3))
    md = paths.COMPARISON_MD.read_text()
    assert "the interval excludes a 4 % reduction at this scale (not at the paper's)" in md
    assert "×1.030 (+3.0 %" in md and "this run is at W3A8" in md
    assert "Missing evaluations (not in the table): int-progressive-s1" in md
    table = pd.read_csv(paths.COMPARISON_CSV).set_index("method")
    assert table.loc["int-progressive", "n_seeds"] == 1
    assert json.loads(paths.METRICS.read_text())["claim.reproduced"] is False


def test_smoke_run_gives_no_verdict(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    _fake_project(fraqat_fids=(95.0, 96.0))
    with caplog.at_level("INFO"):
        report.run(_params(smoke=True))
    md = paths.COMPARISON_MD.read_text()
    assert "Smoke run: no verdict" in md and "Verdict:" not in md
    assert "claim.reproduced" not in json.loads(paths.METRICS.read_text())
    assert "smoke run: no verdict" in caplog.text and "reproduced" not in caplog.text


def test_report_without_results_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FraqatError, match="no evaluation results"):
        report.run(_params())
    assert not paths.COMPARISON_MD.exists()


def test_evaluate_then_report_end_to_end(tmp_path, monkeypatch):
    """Tiny teacher + untrained classifier: fp and a PTQ run through evaluate, then report."""
    from fraqat.data import PROMPTS, prompt_for
    from fraqat.eval.classifier import DigitClassifier, save_classifier
    from fraqat.models.registry import build_tiny_sana
    from fraqat.quant.layers import QuantConfig, calibrate_activations
    from fraqat.stages import evaluate, prepare
    from fraqat.train.runs import quantized_copy, save_run

    monkeypatch.chdir(tmp_path)
    params = Params(methods=["ptq"], seeds=[0],
                    eval={"num_images": 20, "steps": 2, "batch_size": 8})
    prepare.run(params)
    torch.manual_seed(0)
    teacher = build_tiny_sana(16, 1, 2, PROMPTS).eval()
    teacher.save_pretrained(paths.TEACHER)
    save_classifier(paths.CLASSIFIER, DigitClassifier(), {})

    with pytest.raises(FraqatError, match="no fp samples"):
        evaluate.run(params, "ptq", 0)
    evaluate.run(params, "fp", 0)

    config = QuantConfig(weight_bits=4.0, act_bits=8.0)
    student = quantized_copy(teacher, config)
    x = torch.randn(16, 1, 8, 8)

    def forward(model, _batch):
        student.predict(x, torch.rand(16), *student.encode([prompt_for(i % 10) for i in range(16)]))

    calibrate_activations(student.transformer, [0, 1], forward)
    save_run(paths.run_dir("ptq", 0), student, config, {"method": "ptq"})
    evaluate.run(params, "ptq", 0)

    fp = json.loads(paths.eval_metrics("fp", 0).read_text())
    ptq = json.loads(paths.eval_metrics("ptq", 0).read_text())
    keys = {"method", "seed", "weight_bits", "act_bits", "fid", "feature_space",
            "prompt_accuracy", "teacher_mse", "teacher_psnr", "heldout_distill_loss",
            "model_size_mb", "num_images"}
    assert keys <= fp.keys() and keys <= ptq.keys()
    assert fp["weight_bits"] is None and fp["teacher_mse"] == 0 and fp["teacher_psnr"] is None
    assert fp["heldout_distill_loss"] == 0
    assert ptq["weight_bits"] == 4.0 and ptq["act_bits"] == 8.0
    assert ptq["heldout_distill_loss"] > 0 and ptq["teacher_mse"] > 0
    assert ptq["model_size_mb"] < fp["model_size_mb"]
    assert np.isfinite(ptq["fid"]) and ptq["num_images"] == 20
    noise = json.loads((paths.EVAL_REPORTS / "noise.json").read_text())
    assert noise["fid"] > 0 and noise["method"] == "noise"
    assert paths.samples_path("ptq", 0).exists()

    other = Params(methods=["ptq"], seeds=[0], eval={"num_images": 30, "steps": 2})
    with pytest.raises(FraqatError, match="num_images=20"):
        evaluate.run(other, "ptq", 0)

    report.run(params)
    table = pd.read_csv(paths.COMPARISON_CSV)
    assert table["method"].tolist() == ["fp", "ptq", "noise"]
    assert "cannot be tested" in paths.COMPARISON_MD.read_text()


def test_clip_score_is_a_column_only_when_measured(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_project(fraqat_fids=(95.0, 96.8))  # 5 % lower on both seeds
    clip = {"fp": 31.0, "ptq": 27.0, "qat": 30.0, "fraqat": 30.5, "int-progressive": 29.0}
    for method, score in clip.items():
        for seed in (0, 1) if method != "fp" else (0,):
            path = paths.eval_metrics(method, seed)
            write_json(path, {**json.loads(path.read_text()), "clip_score": score + seed})
    report.run(_params())
    table = pd.read_csv(paths.COMPARISON_CSV).set_index("method")
    columns = list(table.reset_index().columns)
    assert columns[columns.index("prompt_accuracy") + 1] == "clip_score"
    assert table.loc["qat", "clip_score"] == pytest.approx(30.5)
    assert np.isnan(table.loc["noise", "clip_score"])  # its JSON has no score
    header = paths.COMPARISON_MD.read_text().split("| method |")[1].splitlines()[0]
    assert "| prompt acc. | CLIP score | teacher PSNR" in header
    assert json.loads(report.DETAILS.read_text())["clip_score.fraqat"] == pytest.approx(31.0)
    assert "| fraqat | W4A8 |" in paths.COMPARISON_MD.read_text()


def test_no_clip_score_leaves_the_table_as_it_was(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_project(fraqat_fids=(95.0, 96.8))  # 5 % lower on both seeds
    path = paths.eval_metrics("qat", 0)  # real pipelines without eval.clip_path write null
    write_json(path, {**json.loads(path.read_text()), "clip_score": None})
    report.run(_params())
    assert list(pd.read_csv(paths.COMPARISON_CSV).columns) == CSV_COLUMNS
    assert "CLIP" not in paths.COMPARISON_MD.read_text()
    assert not any(k.startswith("clip_score") for k in json.loads(paths.METRICS.read_text()))


def test_pipeline_reports_ssim_and_what_compares_with_the_paper(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_project(fraqat_fids=(95.0, 96.8))
    for method in ["fp", *METHODS]:
        for seed in (0, 1) if method != "fp" else (0,):
            path = paths.eval_metrics(method, seed)
            write_json(path, {**json.loads(path.read_text()), "feature_space": "inception",
                              "fid_reference": "real images", "teacher_ssim": 0.8 + seed / 10})
    report.run(_params())
    md = paths.COMPARISON_MD.read_text()
    assert "| teacher PSNR dB / MSE | SSIM to FP |" in md
    assert pd.read_csv(paths.COMPARISON_CSV).set_index("method").loc["qat", "teacher_ssim"] \
        == pytest.approx(0.85)
    assert "Comparable to the paper: FID is Inception features against real images at 20" in md


def test_fid_against_the_fp_images_is_marked_not_comparable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_project(fraqat_fids=(95.0, 96.8))
    for method in ["fp", *METHODS]:
        for seed in (0, 1) if method != "fp" else (0,):
            path = paths.eval_metrics(method, seed)
            write_json(path, {**json.loads(path.read_text()),
                              "fid_reference": "fp pipeline images"})
    report.run(_params())
    assert "**not comparable** to the paper's FiD" in paths.COMPARISON_MD.read_text()

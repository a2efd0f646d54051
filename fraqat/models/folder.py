"""A real model's inputs: its diffusers pipeline folder and the prompt list, checked up front.

``check_inputs`` runs before any stage of a real model does work (``fraqat`` CLI), so an
unknown model, a folder of another family, a broken pipeline folder (an unreadable index, a
component or weights file missing or cut short), an undecodable or empty prompts file or a
reference folder without images stops with one line and exit code 2, leaving earlier outputs
as they were. The folder check reads configs and safetensors headers only; weights load
later, offline unless ``allow_download``.
"""

from __future__ import annotations

from pathlib import Path

from fraqat.checked import (
    check_pipeline_folder,
    from_pretrained,
    image_files,
    read_json,
    read_text_lines,
)
from fraqat.errors import ParamsError
from fraqat.models.default_prompts import PROMPTS
from fraqat.models.families import Family, family_of_class
from fraqat.models.registry import REGISTRY, transformer_class

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def model_family(model: str) -> Family:
    if model not in REGISTRY:
        raise ParamsError(f"params.yaml: model: {model!r} is not known "
                          f"(allowed: {', '.join(REGISTRY)})")
    return family_of_class(REGISTRY[model].cls_name)


def read_prompts(path: str | None) -> list[str]:
    """One prompt per non-blank line of ``path``; :data:`fraqat.models.default_prompts.PROMPTS` when
    unset."""
    if path is None:
        return list(PROMPTS)
    p = Path(path)
    if not p.is_file():
        raise ParamsError(f"params.yaml: prompts_path: {path!r} is not a file "
                          "(allowed: a text file with one prompt per line, or null)")
    prompts = read_text_lines(p, "save it as UTF-8 text, one prompt per line")
    if not prompts:
        raise ParamsError(f"params.yaml: prompts_path: {path!r} holds no prompt "
                          "(allowed: a text file with one prompt per line, or null)")
    return prompts


def pipeline_dir(model: str, model_path: str | None) -> Path:
    """The local pipeline folder of ``model``, checked to be of the model's family."""
    family = model_family(model)
    if model_path is None:
        raise ParamsError(f"params.yaml: model_path: null for model {model!r} (allowed: a "
                          f"diffusers pipeline folder of {family.pipeline_cls}, e.g. a local "
                          f"copy of {REGISTRY[model].hub_id})")
    folder = Path(model_path)
    index = folder / "model_index.json"
    if not index.is_file():
        raise ParamsError(f"params.yaml: model_path: {model_path!r} has no model_index.json "
                          f"(allowed: a diffusers pipeline folder of {family.pipeline_cls}, as "
                          "save_pretrained writes it)")
    todo = f"restore it, or point model_path at a complete {family.pipeline_cls} folder"
    found = read_json(index, todo=todo).get("_class_name", "?")
    config = folder / "transformer" / "config.json"
    transformer = read_json(config, todo=todo).get("_class_name", "?") \
        if config.is_file() else "no transformer/config.json"
    if found != family.pipeline_cls or transformer != family.transformer_cls:
        raise ParamsError(f"params.yaml: model_path: {model_path!r} holds a {found} with "
                          f"{transformer}, not the {family.pipeline_cls} with "
                          f"{family.transformer_cls} that model {model!r} needs (allowed: a "
                          f"{family.name} pipeline folder, or set model to its family)")
    check_pipeline_folder(folder, todo)
    return folder


def check_inputs(params) -> None:
    """All the checks a real model's run needs, before any stage works (one line each)."""
    if params.model == "tiny-sana":
        return
    pipeline_dir(params.model, params.model_path)
    read_prompts(params.prompts_path)
    e = params.eval
    for key, path, is_dir, what in (
            ("reference_path", e.reference_path, True, "a folder of real images"),
            ("clip_path", e.clip_path, True, "a local transformers CLIP folder"),
            ("inception_path", e.inception_path, False, "clean-fid's Inception weights file")):
        if path is not None and not (Path(path).is_dir() if is_dir else Path(path).is_file()):
            raise ParamsError(f"params.yaml: eval.{key}: {path!r} does not exist "
                              f"(allowed: {what}, or null)")
    if e.reference_path is not None:
        reference_images(e.reference_path)


def reference_images(folder: str | Path) -> list[Path]:
    """The image files of ``eval.reference_path`` (at least 2: FID needs a covariance)."""
    return image_files(folder, IMAGE_SUFFIXES, "put >= 2 real images there, or set "
                       "eval.reference_path: null (FID against the fp pipeline's images)")


def load_pipeline(model: str, model_path: str | None, allow_download: bool = False):
    """The checked folder's diffusers pipeline (fp32, CPU), offline unless allowed."""
    import diffusers

    family = model_family(model)
    folder = pipeline_dir(model, model_path)
    transformer_class(model)  # the registry's class must exist in this diffusers
    cls = getattr(diffusers, family.pipeline_cls)
    return from_pretrained(cls, folder, f"point model_path at a complete {family.pipeline_cls} "
                           "folder", local_files_only=not allow_download)


"""Checked loaders: every file a stage reads is opened here, and a bad one is one line.

A missing, truncated, malformed or wrong-kind file raises :class:`~fraqat.errors.BadFileError`
(``<path>: <what is wrong>; <what to do>``), which the CLI prints as one line with exit code 2.
Stages read their inputs before they write, so a bad input leaves no new output behind.

What to do: callers say it for the user's own files (a pipeline folder, a prompts file, a
checkpoint); for a pipeline output it is the ``dvc repro`` of the stage that ``dvc.yaml`` says
writes it (:func:`stage_writing`, DVC's own lookup, so matrix stages come out right).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from fraqat.errors import BadFileError

SHARD_GLOB = "shard-*-of-*.safetensors"  # the row shards fraqat.io.save_tensors writes
_SHARD = re.compile(r"shard-(\d+)-of-(\d+)\.safetensors")
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),  # before UTF-16:
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),  # same first bytes
         (codecs.BOM_UTF8, "utf-8-sig"))


def shard_name(i: int, k: int) -> str:
    return f"shard-{i:05d}-of-{k:05d}.safetensors"


def stage_writing(path: str | Path) -> str | None:
    """The ``dvc.yaml`` stage whose output holds ``path`` (e.g. ``train@qat``); ``None``
    outside a DVC repo or for a path no stage writes. Only asked on the way to an error."""
    try:
        from dvc.repo import Repo

        with Repo() as repo:
            outs = repo.find_outs_by_path(str(Path(path).resolve()), strict=False)
            return outs[0].stage.addressing
    except Exception:  # not a DVC repo, not an output, an unreadable dvc.yaml: no advice
        return None


def bad_file(path: str | Path, problem: str, todo: str | None = None) -> BadFileError:
    """The one line for ``path``; ``todo`` defaults to rebuilding the DVC output."""
    if todo is None:
        stage = stage_writing(path)
        todo = f"rebuild it with `dvc repro {stage}`" if stage else \
            "rerun the stage that writes it (dvc.yaml names it)"
    return BadFileError(f"{path}: {problem}; {todo}")


def _why(exc: BaseException) -> str:
    """``Type: first sentence`` of an exception, short enough for one line."""
    failures = getattr(exc, "failures", None)  # torch.distributed.checkpoint: each rank's error
    if isinstance(failures, dict) and failures:
        first = next(iter(failures.values()))
        exc = first[0] if isinstance(first, tuple) else first
    lines = str(exc).split("Traceback (most recent call last)")[0].split()
    text = " ".join(lines)
    text = re.split(r"(?<=[^.])\.\s", text, maxsplit=1)[0]
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def reading(path: str | Path, kind: str, todo: str | None = None) -> Iterator[None]:
    """Any failure of the body, which opens or parses ``path``, becomes one line."""
    try:
        yield
    except BadFileError:
        raise
    except FileNotFoundError:
        raise bad_file(path, "missing", todo) from None
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # every parser has its own errors (DCP's derive from
        # BaseException); all mean "unusable file"
        raise bad_file(path, f"not a readable {kind} ({_why(exc)})", todo) from None


def require(path: str | Path, kind: str, todo: str | None = None, folder: bool = False) -> Path:
    """``path`` if it exists as a file (or a folder), else one line."""
    path = Path(path)
    if not path.exists():
        raise bad_file(path, f"missing (expected {kind})", todo)
    if path.is_dir() != folder:
        raise bad_file(path, f"is a {'file' if folder else 'folder'}, not {kind}", todo)
    return path


def require_keys(path: str | Path, found: Any, keys: Sequence[str], kind: str = "the file "
                 "expected here", todo: str | None = None) -> None:
    """One line unless every one of ``keys`` is in ``found`` (what ``path`` held)."""
    missing = [k for k in keys if k not in found]
    if missing:
        raise bad_file(path, f"has no {', '.join(map(repr, missing))} (not {kind}?)", todo)


def read_json(path: str | Path, keys: Sequence[str] = (), todo: str | None = None) -> dict:
    """A JSON object file, with ``keys`` at its top level."""
    path = require(path, "a JSON file", todo)
    with reading(path, "JSON file", todo):
        obj = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(obj, dict):
        raise bad_file(path, f"holds a JSON {type(obj).__name__}, not an object", todo)
    require_keys(path, obj, keys, "the JSON file expected here", todo)
    return obj


def read_text_lines(path: str | Path, todo: str | None = None) -> list[str]:
    """The stripped non-blank lines of a text file: UTF-8, or UTF-16/32 with a byte-order mark."""
    path = require(path, "a text file", todo)
    raw = path.read_bytes()
    encoding = next((enc for bom, enc in _BOMS if raw.startswith(bom)), "utf-8")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise bad_file(path, f"not {encoding.upper()} text (byte 0x{raw[exc.start]:02x} at "
                             f"offset {exc.start})", todo) from None
    if "\0" in text:
        raise bad_file(path, "holds NUL characters: a binary file, not text", todo)
    return [line.strip() for line in text.splitlines() if line.strip()]


def tensor_files(path: str | Path, todo: str | None = None) -> list[Path]:
    """``path`` itself, or the complete list of its row shards where it is a folder."""
    path = require(path, "a safetensors file", todo, folder=Path(path).is_dir())
    if not path.is_dir():
        return [path]
    found = {m.groups(): p for p in path.iterdir() if (m := _SHARD.fullmatch(p.name))}
    if not found:
        raise bad_file(path, f"a folder without {SHARD_GLOB} row shards", todo)
    k = int(next(iter(found))[1])
    want = [path / shard_name(i, k) for i in range(k)]
    missing = [p for p in want if not p.is_file()]
    if missing or len(found) != k:
        what = f"shard {missing[0].name} missing" if missing else "shards of different counts"
        raise bad_file(path, f"{what} ({len(found)} files, {k} expected)", todo)
    return want


def load_tensors(path: str | Path, keys: Sequence[str] = (),
                 todo: str | None = None) -> dict[str, torch.Tensor]:
    """What :func:`fraqat.io.save_tensors` wrote, a file or a folder of row shards
    (concatenated), with ``keys`` among its tensors."""
    from safetensors.torch import load_file

    parts: dict[str, list[torch.Tensor]] = {}
    for shard in tensor_files(path, todo):
        with reading(shard, "safetensors file", todo):
            for name, t in load_file(str(shard)).items():
                parts.setdefault(name, []).append(t)
    require_keys(path, parts, keys, "the tensor file expected here", todo)
    return {name: p[0] if len(p) == 1 else torch.cat(p) for name, p in parts.items()}


@contextmanager
def open_tensors(path: str | Path, todo: str | None = None) -> Iterator[Any]:
    """``safetensors.safe_open`` of a tensor file (the first shard where sharded): reads
    single tensors or shapes without loading the rest; a missing key is one line too."""
    from safetensors import safe_open

    first = tensor_files(path, todo)[0]
    with reading(first, "safetensors file", todo), safe_open(str(first), "pt") as f:
        yield f


def read_metadata(path: str | Path, todo: str | None = None) -> dict[str, str]:
    """The metadata :func:`fraqat.io.save_tensors` stored (the first shard's, where sharded)."""
    with open_tensors(path, todo) as f:
        return f.metadata() or {}


def load_torch(path: str | Path, todo: str | None = None) -> Any:
    """A ``torch.save`` file (a training checkpoint: trusted, written by this project)."""
    path = require(path, "a torch.save file", todo)
    with reading(path, "torch.save file", todo):
        return torch.load(path, map_location="cpu", weights_only=False)


def load_weights(module: torch.nn.Module, path: str | Path, todo: str | None = None) -> None:
    """Load a safetensors state dict into ``module``; other keys or shapes are one line."""
    state = load_tensors(path, todo=todo)
    with reading(path, f"weights file for this {type(module).__name__}", todo):
        module.load_state_dict(state)


def image_files(folder: str | Path, suffixes: Sequence[str], todo: str,
                at_least: int = 2) -> list[Path]:
    """The image files of ``folder`` (by suffix), at least ``at_least`` of them."""
    folder = require(folder, "a folder of images", todo, folder=True)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
    if len(files) < at_least:
        raise bad_file(folder, f"holds {len(files)} image files (needs >= {at_least} "
                               f"{'/'.join(suffixes)} files)", todo)
    return files


def open_image(path: str | Path, todo: str | None = None) -> Any:
    """A decoded RGB ``PIL.Image``."""
    from PIL import Image

    with reading(path, "image", todo):
        with Image.open(path) as img:
            return img.convert("RGB")


# --- diffusers folders ------------------------------------------------------------------------

CONFIG_FILES = ("config.json", "scheduler_config.json", "tokenizer_config.json",
                "preprocessor_config.json")  # what each kind of component folder holds
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack")


def check_component(folder: str | Path, todo: str | None,
                    listed_in: str = "model_index.json") -> None:
    """One component folder of a pipeline (or a lone model folder): it exists, its config
    parses, every weights file named by an index exists, every safetensors header is whole
    (the header check reads no weights, so it is cheap for a 12 B transformer)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise bad_file(folder, f"missing ({listed_in} lists it)", todo)
    configs = [folder / n for n in CONFIG_FILES if (folder / n).is_file()]
    if not configs:
        raise bad_file(folder / "config.json", f"missing ({listed_in} lists {folder.name}/ "
                                               "as a component)", todo)
    for config in configs:
        read_json(config, todo=todo)
    for index in sorted(folder.glob("*.index.json")):
        shards = set(read_json(index, ("weight_map",), todo)["weight_map"].values())
        for shard in sorted(shards):
            if not (folder / shard).is_file():
                raise bad_file(folder / shard, f"missing ({index.name} lists it)", todo)
    weights = [p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    if configs[0].name == "config.json" and not weights:
        raise bad_file(folder, f"has no weights file ({'/'.join(WEIGHT_SUFFIXES)})", todo)
    for path in sorted(p for p in weights if p.suffix == ".safetensors"):
        with open_tensors(path, todo):
            pass


def check_pipeline_folder(folder: str | Path, todo: str) -> dict:
    """A diffusers pipeline folder as ``save_pretrained`` writes it: ``model_index.json``
    parses and every component it lists passes :func:`check_component`. Returns the index."""
    folder = Path(folder)
    index = read_json(folder / "model_index.json", ("_class_name",), todo)
    for name, spec in index.items():
        if not name.startswith("_") and isinstance(spec, list) and None not in spec:
            check_component(folder / name, todo)
    return index


def from_pretrained(cls: Any, folder: str | Path, todo: str | None = None,
                    **kwargs: Any) -> Any:
    """``cls.from_pretrained(folder, **kwargs)``; whatever still fails to load after the
    checks above (a ``.bin`` file, a config diffusers rejects) is one line naming the folder."""
    where = Path(folder) / kwargs.get("subfolder", "") if kwargs.get("subfolder") else folder
    with reading(where, f"{cls.__name__} folder", todo):
        return cls.from_pretrained(folder, **kwargs)

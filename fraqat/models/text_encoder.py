"""A small learned prompt encoder for the embedded default (no hub text encoder offline).

Same interface as a real T5/Gemma encoder wrapper: ``encode(prompts) -> (hidden, mask)`` with
``hidden`` (B, L, D) and ``mask`` (B, L), so a real encoder slots in without touching callers.
Whitespace tokens over a fixed vocabulary, learned token + position embeddings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from fraqat.checked import load_weights, read_json

PAD, UNK = "<pad>", "<unk>"


class PromptEncoder(nn.Module):
    def __init__(self, vocab: Sequence[str], dim: int, max_len: int = 8):
        super().__init__()
        self.vocab = [PAD, UNK] + [w for w in vocab if w not in (PAD, UNK)]
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.dim, self.max_len = dim, max_len
        self.tokens = nn.Embedding(len(self.vocab), dim)
        self.positions = nn.Parameter(torch.zeros(max_len, dim))
        nn.init.normal_(self.tokens.weight, std=1.0)

    @classmethod
    def from_prompts(cls, prompts: Sequence[str], dim: int, max_len: int = 8) -> PromptEncoder:
        vocab = sorted({w for p in prompts for w in p.lower().split()})
        return cls(vocab, dim, max_len)

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(prompts), self.max_len, dtype=torch.long)
        for i, p in enumerate(prompts):
            words = p.lower().split()[: self.max_len]
            ids[i, : len(words)] = torch.tensor([self.index.get(w, 1) for w in words])
        return ids, (ids != 0).long()

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(self.positions.device), mask.to(self.positions.device)
        return self.tokens(ids) + self.positions, mask

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"vocab": self.vocab[2:], "dim": self.dim, "max_len": self.max_len}
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()},
                  str(folder / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> PromptEncoder:
        folder = Path(folder)
        enc = cls(**read_json(folder / "config.json", ("vocab", "dim", "max_len")))
        load_weights(enc, folder / "model.safetensors")
        return enc

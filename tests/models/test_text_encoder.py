"""fraqat.models.text_encoder.PromptEncoder: shapes, padding mask, <unk>, save/load round trip."""

from __future__ import annotations

from pathlib import Path

import torch

from fraqat.data import PROMPTS
from fraqat.models.text_encoder import PAD, UNK, PromptEncoder


def make(dim: int = 12, max_len: int = 6) -> PromptEncoder:
    torch.manual_seed(0)
    return PromptEncoder.from_prompts(PROMPTS, dim=dim, max_len=max_len)


def test_vocab_and_tokens() -> None:
    enc = make()
    assert enc.vocab[:2] == [PAD, UNK]
    assert len(enc.vocab) == 2 + len({w for p in PROMPTS for w in p.split()})
    ids, mask = enc.tokenize(["a handwritten digit seven", "Digit  ZEBRA"])
    assert ids.dtype == torch.long and ids.shape == mask.shape == (2, 6)
    assert ids[0, :4].tolist() == [enc.index[w] for w in "a handwritten digit seven".split()]
    assert ids[1, :2].tolist() == [enc.index["digit"], enc.index[UNK]]  # case folded; unknown
    assert mask.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]]


def test_encode_shapes_and_truncation() -> None:
    enc = make(dim=12, max_len=3)
    hidden, mask = enc.encode(["a handwritten digit one", "", "two"])
    assert hidden.shape == (3, 3, 12) and mask.shape == (3, 3)
    assert mask.tolist() == [[1, 1, 1], [0, 0, 0], [1, 0, 0]]
    assert torch.isfinite(hidden).all()


def test_unknown_words_share_unk_embedding() -> None:
    enc = make()
    hidden, _ = enc.encode(["zebra", "quokka"])
    assert torch.equal(hidden[0], hidden[1])
    known, _ = enc.encode(["seven"])
    assert not torch.equal(hidden[0], known[0])


def test_round_trip(tmp_path: Path) -> None:
    enc = make()
    with torch.no_grad():
        enc.positions.normal_()  # non-default positions must survive too
    enc.save_pretrained(tmp_path / "enc")
    loaded = PromptEncoder.from_pretrained(tmp_path / "enc")
    assert loaded.vocab == enc.vocab and (loaded.dim, loaded.max_len) == (enc.dim, enc.max_len)
    prompts = [*PROMPTS, "an unseen prompt"]
    (h1, m1), (h2, m2) = enc.encode(prompts), loaded.encode(prompts)
    assert torch.equal(h1, h2) and torch.equal(m1, m2)

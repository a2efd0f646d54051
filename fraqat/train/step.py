"""The trainer's forward + backward, eager or replayed from a captured CUDA graph.

Why: a quantized DiT step launches thousands of small kernels (a weight and an activation
fake-quant per layer, forward and backward, besides the model's own); eager, the host spends
longer launching them than the GPU spends running them. A CUDA graph replays the whole
forward + backward with one launch. The optimizer step stays eager (fused AdamW: a few
launches), so learning-rate changes, checkpoints and exact resume work as before.

What a graph may not do, and why it is safe here:

- inputs must live at fixed addresses: the batch indices are copied into a static device
  tensor and the gather from the (device-resident) data runs inside the graph;
- values read by the kernels must be tensors, not Python numbers baked at capture: the
  fake-quant ops read the bit-width from each layer's ``weight_grid`` buffer and the frozen
  activation scales from buffers, so a bit change is a copy the next replay sees;
- what does change the launched kernels (weights quantized or not, activation quantizers
  calibrated, the batch shape) is the graph's key: a new key re-captures (never a stale graph);
- gradients: captured with ``.grad`` unset, backward writes them into the graph's own memory
  and each replay overwrites them (no zeroing between steps).

``mode``: "on" (a capture failure is an error), "off", or "auto" (on for one CUDA process,
with a warning and the eager step if capture fails).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Hashable

import torch

from fraqat.errors import ParamsError

log = logging.getLogger(__name__)
MODES = ("auto", "on", "off")
WARMUP_RUNS = 2  # eager forward + backward before a capture: lazy init, Triton compiles


class StepRunner:
    """``forward_backward(idx, key)``: the loss (a detached device scalar), grads in ``.grad``."""

    def __init__(self, loss_fn: Callable[[torch.Tensor], torch.Tensor],
                 params: list[torch.nn.Parameter], device: torch.device, mode: str = "auto",
                 autocast_dtype: torch.dtype | None = None, distributed: bool = False):
        if mode not in MODES:
            raise ParamsError(f"params.yaml: train.cuda_graphs: {mode!r} is not allowed "
                              f"(allowed: {', '.join(MODES)})")
        if mode == "on" and (device.type != "cuda" or distributed):
            raise ParamsError(f"params.yaml: train.cuda_graphs: 'on' needs one CUDA process, "
                              f"this run is on {device.type}{' with DDP' if distributed else ''} "
                              f"(allowed here: auto, off)")
        self.loss_fn, self.params, self.device = loss_fn, params, device
        self.autocast_dtype = autocast_dtype
        self.graphs = mode != "off" and device.type == "cuda" and not distributed
        self.strict = mode == "on"
        self.captures = 0  # how many graphs were captured (tests, logs)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._key: Hashable = None
        self._idx: torch.Tensor | None = None
        self._loss: torch.Tensor | None = None

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        # no weight-cast cache: a graph must not keep casts made before its capture
        return torch.autocast(self.device.type, self.autocast_dtype, cache_enabled=False)

    def _run(self, idx: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            loss = self.loss_fn(idx)
        loss.backward()
        return loss.detach()

    def _clear_grads(self) -> None:
        for p in self.params:
            p.grad = None

    def forward_backward(self, idx: torch.Tensor, key: Hashable = None) -> torch.Tensor:
        if not self.graphs:
            self._clear_grads()
            return self._run(idx)
        key = (tuple(idx.shape), key)
        if self._graph is None or key != self._key:
            try:
                self._capture(idx, key)
            except RuntimeError as exc:
                if self.strict:
                    raise
                log.warning("CUDA graph capture failed (%s); training eagerly", exc)
                self.release()
                self.graphs = False
                return self.forward_backward(idx)
        assert self._graph is not None and self._idx is not None and self._loss is not None
        self._idx.copy_(idx)
        self._graph.replay()
        return self._loss

    def release(self) -> None:
        """Drop the graph and its memory (the gradients it owns go with it)."""
        self._graph, self._loss, self._idx, self._key = None, None, None, None
        self._clear_grads()

    def _capture(self, idx: torch.Tensor, key: Hashable) -> None:
        self.release()
        self._idx = idx.to(self.device, copy=True)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self._clear_grads()
                self._run(self._idx)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._clear_grads()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._loss = self._run(self._idx)
        self._graph, self._key = graph, key
        self.captures += 1
        log.info("captured the training step in a CUDA graph (key %s)", key)

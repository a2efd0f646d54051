"""One forward + backward of each fake-quant kernel on 8192x8192, for Nsight Compute to read.

    ncu --clock-control none -k regex:_kernel --metrics \\
        gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed \\
        python -m benchmarks.ncu_kernels
"""

from __future__ import annotations

import torch

from fraqat.quant import ops
from fraqat.quant.core import QParams


def main() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        x = (torch.randn(8192, 8192, device="cuda") * 0.02).to(dtype).requires_grad_(True)
        g = torch.randn_like(x)
        for gran in ("channel", "group", "tensor"):
            torch.autograd.grad(ops.fake_quantize(x, 4.0, granularity=gran), x, g)
        qp = QParams(torch.tensor(0.01, device="cuda"),
                     torch.tensor(128, dtype=torch.int32, device="cuda"), 0, 255)
        torch.autograd.grad(ops.fake_quantize_given(x, qp), x, g)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()

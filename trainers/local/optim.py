"""Adam for the embedded trainer, without ``torch.optim``'s first-use cost.

``torch.optim.Adam`` imports ``torch._dynamo`` (and with it sympy and ~800 modules) the
first time an optimizer is built in a process: 1.6 CPU-s here, paid by every sandboxed
training job, which is a fresh process (3% of a default candidate-seed, 4% of a screening
one, most of a verifier's smoke run). This class performs the same update as
``torch.optim.Adam``'s single-tensor path (the one it takes on the CPU: no weight decay,
no amsgrad, not capturable, not differentiable), op for op, so the parameters it produces
are bit-identical to torch's (tests/test_optim.py checks that against torch.optim.Adam).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class Adam:
    """Adam (Kingma & Ba 2015) with bias correction, as ``torch.optim.Adam(params, lr,
    betas, eps)``; ``zero_grad`` and ``step`` as there."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("Adam got no parameters that require grad")
        self.lr, (self.beta1, self.beta2), self.eps = lr, betas, eps
        # per parameter, as torch keeps it: (steps taken, exp_avg, exp_avg_sq), made at
        # the parameter's first step with a gradient
        self.state: list[tuple[int, Tensor, Tensor] | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:  # torch skips a parameter without a gradient
                continue
            if self.state[i] is None:
                self.state[i] = (0, torch.zeros_like(p, memory_format=torch.preserve_format),
                                 torch.zeros_like(p, memory_format=torch.preserve_format))
            n, m, v = self.state[i]
            n += 1
            self.state[i] = (n, m, v)
            g = p.grad
            m.lerp_(g, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            # torch keeps the count as a float tensor and reads it back as a Python float
            step = float(n)
            bias_correction1 = 1 - self.beta1 ** step
            bias_correction2_sqrt = (1 - self.beta2 ** step) ** 0.5
            denom = (v.sqrt() / bias_correction2_sqrt).add_(self.eps)
            p.addcdiv_(m, denom, value=-(self.lr / bias_correction1))

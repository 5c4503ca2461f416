"""The matrix products and attention kernels of a training step (or all its operators), logged at their shapes and
run again alone: how long they take with nothing else around them, and so the highest FLOP ratio the step could
reach if it ran nothing but them. benchmarks/step_flops.py imports it as `step_products`.

torch's FLOP counter counts matrix products and convolutions; on CPU, attention runs as one fused kernel
(`_scaled_dot_product_flash_attention_for_cpu` and its backward) that the counter has no formula for, so its products
go uncounted. They are counted here with torch's own attention formulas (both products in full, as torch counts them
for the GPU kernels), kept apart from the counter's total.
"""

import statistics
import time
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten
PRODUCTS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.convolution, aten.convolution_backward}
ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: "forward",
    aten._scaled_dot_product_flash_attention_for_cpu_backward: "backward",
}
KINDS = ("products", "attention", "kernels")


def _signature(value):
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.stride(), value.dtype)
    if isinstance(value, list | tuple):
        return tuple(_signature(v) for v in value)
    return value


def _copy(value):
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def attention_flops(kind: str, args: tuple) -> int:
    """torch's FLOP count of one CPU attention call (forward: query, key, value first; backward: grad_out first)."""
    if kind == "forward":
        return sdpa_flop_count(args[0].shape, args[1].shape, args[2].shape)
    return sdpa_backward_flop_count(args[0].shape, args[1].shape, args[2].shape, args[3].shape)


def kind(func) -> str:
    """A logged call's kind: "products", "attention" or "kernels" (any other operator)."""
    packet = func.overloadpacket
    return "attention" if packet in ATTENTION else "products" if packet in PRODUCTS else "kernels"


class ProductLog(TorchDispatchMode):
    """While entered, every matrix product and attention kernel (with every_kernel, every operator): how often it ran
    at each signature (operator, shapes, strides, dtypes, other arguments), a copy of its inputs the first time, and
    the attention's FLOPs."""

    def __init__(self, every_kernel: bool = False):
        super().__init__()
        self.every_kernel = every_kernel
        self.calls: Counter = Counter()
        self.inputs: dict = {}
        self.attention_flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        called = kind(func)
        if self.every_kernel or called != "kernels":
            key = (func, _signature(args), _signature(tuple(sorted(kwargs.items()))))
            self.calls[key] += 1
            if key not in self.inputs:
                with _disable_current_modes():  # the copies are no calls of the step: a log below must not see them
                    self.inputs[key] = (tree_map(_copy, args), tree_map(_copy, kwargs))
            if called == "attention":
                self.attention_flops += attention_flops(ATTENTION[func.overloadpacket], args)
        return func(*args, **kwargs)

    def alone(self, kinds: tuple[str, ...] = KINDS, repeats: int = 5) -> dict[str, float]:
        """Seconds of the logged calls of those kinds (`products`, `attention`, `kernels`: every other operator,
        each called from Python as eager mode calls it), each signature run alone on its first inputs: two warm-up
        runs, then the median of `repeats`, times how often it ran. `failed`: calls whose operator would not run
        again on copies of its inputs (left out of the seconds)."""
        seconds = dict.fromkeys(kinds, 0.0) | {"failed": 0}
        for key, count in self.calls.items():
            func = key[0]
            if kind(func) not in kinds:
                continue
            args, kwargs = self.inputs[key]
            runs = []
            try:
                for run in range(2 + repeats):
                    start = time.perf_counter()
                    func(*args, **kwargs)
                    if run >= 2:
                        runs.append(time.perf_counter() - start)
            except (RuntimeError, TypeError, ValueError):
                seconds["failed"] += count
                continue
            seconds[kind(func)] += statistics.median(runs) * count
        return seconds

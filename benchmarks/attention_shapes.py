"""The text model's attention at the tiny study's shapes: torch's fused kernel against two batched products.

    .venv/bin/python benchmarks/attention_shapes.py                  # each shape alone, both ways
    .venv/bin/python benchmarks/attention_shapes.py --alternate 84   # GRPO steps, the two ways on alternate steps

On CPU, `scaled_dot_product_attention` runs a fused flash kernel that is slow at GRPO's short queries over long
keys (64 rows, 9-17 completion tokens against some 110 keys with a padding mask). `two_products` computes the same
attention as a batched product, a softmax and a second product, the heads that share a key-value head stacked as
one block of queries (no repeat of the keys); its sums run in another order, so results agree to float rounding, not
bit for bit. Each shape prints one JSON line: milliseconds forward and backward (or forward only, for one query),
forward without gradient, and the largest difference. `--alternate STEPS` trains the tiny profile's RFT arm for
STEPS steps in one process, transformers' sdpa attention on even steps and two_products (every CPU call with a
boolean mask or none) on odd ones, and prints the median step of each after the first 4: one process, so the
machine's drift (runs of one kind differ by up to 18% between processes) falls on both alike. docs/experiments.md,
"A GRPO step by operator", has the numbers and why the project does not use it.
"""

import argparse
import functools
import json
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 32  # the tiny text model's
SHAPES = {  # name: (rows, queries, keys, padding mask, causal)
    "grpo_completions_10": (64, 10, 111, True, False),
    "grpo_completions_17": (64, 17, 118, True, False),
    "grpo_prompts": (4, 101, 101, False, True),
    "generated_token": (64, 1, 105, True, False),
    "sft": (16, 111, 111, False, True),
}


def fused(query, key, value, mask, causal: bool, scale: float):
    """transformers' sdpa attention (torch's kernel, the keys repeated to every head, or for one query the heads of a
    key-value head packed), as the text model calls it, in two_products' layout (rows, heads, queries, dim)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = SimpleNamespace(num_key_value_groups=query.shape[1] // key.shape[1], is_causal=causal)
    out, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=scale, is_causal=causal)
    return out.transpose(1, 2)


def two_products(query, key, value, mask, causal: bool, scale: float):
    """softmax(q k^T * scale, masked) v with the heads of each key-value head as one block of queries. mask: boolean,
    broadcastable to (rows, 1, queries, keys), True where a query may attend; causal: the lower triangle aligned to
    the last key, as with a cache."""
    rows, heads, queries, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    scores = torch.matmul(query.reshape(rows, kv_heads, groups * queries, dim) * scale, key.transpose(-1, -2))
    scores = scores.view(rows, kv_heads, groups, queries, keys)
    if causal:
        mask = torch.ones(queries, keys, dtype=torch.bool, device=query.device).tril(keys - queries)
    if mask is not None:
        scores = scores.masked_fill(~(mask if mask.dim() == 2 else mask[:, :, None]), float("-inf"))
    weights = scores.softmax(-1).view(rows, kv_heads, groups * queries, keys)
    return torch.matmul(weights, value).view(rows, heads, queries, dim)


def milliseconds(call, repeats: int = 40) -> float:
    for _ in range(5):
        call()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) / repeats * 1e3


def alone() -> None:
    """Each of SHAPES both ways, one JSON line each."""
    torch.manual_seed(0)
    scale = HEAD_DIM**-0.5
    for name, (rows, queries, keys, padded, causal) in SHAPES.items():
        query = torch.randn(rows, HEADS, queries, HEAD_DIM, requires_grad=True)
        key, value = (torch.randn(rows, KV_HEADS, keys, HEAD_DIM, requires_grad=True) for _ in range(2))
        mask = None
        if padded:  # causal over the last `queries` keys, the first three keys of every row padding
            mask = torch.ones(rows, 1, queries, keys, dtype=torch.bool).tril(keys - queries)
            mask[..., :3] = False
        grad = torch.randn_like(query)
        line = {"shape": name, "rows": rows, "queries": queries, "keys": keys}
        outputs = {}
        for label, attend in (("fused", fused), ("two_products", two_products)):
            call = functools.partial(attend, query, key, value, mask, causal, scale)
            with torch.no_grad():
                line[f"{label}_no_grad_ms"] = round(milliseconds(call), 3)
                outputs[label] = call()
            if queries > 1:
                line[f"{label}_forward_backward_ms"] = round(milliseconds(lambda c=call, g=grad: c().backward(g)), 3)
        line["largest_difference"] = float((outputs["fused"] - outputs["two_products"]).abs().max())
        print(json.dumps(line), flush=True)


def attention_functions() -> tuple:
    """(transformers' sdpa attention, the same with two_products for every CPU call with a boolean mask or none, no
    dropout and no position bias)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    original = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
        usable = (
            query.device.type == "cpu"
            and not dropout
            and kwargs.get("position_bias") is None
            and (attention_mask is None or attention_mask.dtype == torch.bool)
        )
        if not usable:
            return original(module, query, key, value, attention_mask, dropout, scaling, is_causal, **kwargs)
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        causal = causal and attention_mask is None and query.shape[2] > 1
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        out = two_products(query, key, value, attention_mask, causal, scale)
        return out.transpose(1, 2).contiguous(), None

    return original, attention


def alternate(steps: int, warmup: int = 4) -> None:
    """The tiny RFT arm for `steps` steps, the fused kernel on even steps and two_products on odd ones; one JSON
    line with each one's median and mean step (steps after warmup) and how many steps each had."""
    from transformers import TrainerCallback
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from forgetting.rft import train_rft
    from forgetting.trainer import preload

    from short_arms import short_arms

    kinds = dict(zip(("fused", "two_products"), attention_functions(), strict=True))
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}

    class Alternate(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.kind, self.step = ("two_products" if state.global_step % 2 else "fused"), state.global_step
            ALL_ATTENTION_FUNCTIONS["sdpa"] = kinds[self.kind]
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if self.step >= warmup:
                seconds[self.kind].append(time.perf_counter() - self.started)

    preload()
    try:
        with tempfile.TemporaryDirectory() as folder:
            config, base, dataset, _ = short_arms("tiny", steps, Path(folder))
            train_rft(config, base, dataset, Path(folder) / "rft", [Alternate()])
    finally:
        ALL_ATTENTION_FUNCTIONS["sdpa"] = kinds["fused"]
    line = {"steps": steps}
    for kind, values in seconds.items():
        line |= {f"{kind}_steps": len(values), f"{kind}_median_s": round(statistics.median(values), 4)}
        line[f"{kind}_mean_s"] = round(statistics.mean(values), 4)
    line["speedup"] = round(line["fused_median_s"] / line["two_products_median_s"], 3)
    print(json.dumps(line), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--alternate", type=int, metavar="STEPS", help="GRPO steps, the two ways on alternate steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.alternate:
        alternate(args.alternate)
    else:
        alone()


if __name__ == "__main__":
    main()

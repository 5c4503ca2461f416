"""The arms' speed at the paper's model size on a GPU: SFT tokens/s and model FLOP utilisation, GRPO rollout
tokens/s with transformers' generate and with vLLM where it is installed.

    python benchmarks/gpu_arms.py                       # on a CUDA machine: Qwen2.5-VL-3B-sized, bf16
    python benchmarks/gpu_arms.py --text-layers 1 --vision-blocks 1 --steps 2 --rollout-tokens 8   # a CPU check

The model is Qwen2.5-VL-3B's architecture at full widths and depth (forgetting/architectures.py), with its real
151,936-token embedding and head, initialised at random: the weights do not change the arithmetic. Inputs are what
the paper profile trains on: 3x3 jigsaws of the bundled photos at 504 px (324 image tokens a prompt, 1,296 patches
through the vision tower) with the think prompt, batched through the project's processor path.

- SFT: forward, backward and AdamW step on --batch sequences (LoRA as the paper profiles train, or --full),
  bf16, gradient checkpointing as the profiles set it. Model FLOPs per step: 2 x parameters x tokens for the
  forward (vision blocks on their patches, the merger on its tokens, the language model on every token), twice
  that for the backward's activation gradients, and once more for the weights' gradients when training all of
  them (--full); recomputation under gradient checkpointing is not counted (MFU, as usual). MFU = model FLOP/s over
  the GPU's dense bf16 peak (--peak-tflops, or a table by device name).
- GRPO rollouts: --generations completions of --prompts prompts sampled at temperature 1 for --rollout-tokens
  tokens each (a random model rarely stops: every completion runs to the limit), generated tokens/s; then the same
  through vLLM when it imports (its failure is reported, not raised).
- The model runs the study's faster paths, as models.load_model installs them (forgetting/fast_paths.py;
  FORGETTING_FAST_PATHS=0 measures transformers' own). --trace FILE: one more SFT step and 16 tokens of rollouts
  under torch's profiler, its operators by their own device time (CPU time without a GPU) written to FILE, with
  how much of each part's wall time the device was busy (far below 1: the GPU waits for Python and launches).
- --operators: instead of timing, counts the operators one SFT step and one decoding step call, by the part of the
  model that calls them (the vision tower's windowed and full-attention blocks, the language model's layers, the
  rest of the forward; the backward pass, gradient checkpointing's recomputation included, and the optimizer). On a
  GPU each is at least one kernel launch, and a step of tens of thousands of them waits for Python and launches
  more than for the device. The counts do not depend on the widths, so --narrow cuts them (the depth, heads per
  key, windows and patches stay) and a CPU counts the full-depth model in minutes:

      python benchmarks/gpu_arms.py --operators --narrow

Prints one JSON line last.
"""

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from forgetting import fast_paths
from forgetting.architectures import architecture_config, project_tokenizer, stock_chat_template
from forgetting.config import PuzzleConfig
from forgetting.inference import sampling
from forgetting.models import LORA_TARGETS, batch, chat
from forgetting.puzzle_data import generate_puzzles
from forgetting.puzzles import make_target
from forgetting.tiny_models import build_processor

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}  # dense bf16


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


# --narrow: the widths cut, the structure kept (the text heads' size, 2 heads a key, the vision heads' size)
NARROW_TEXT = dict(hidden_size=512, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)
NARROW_VISION = dict(hidden_size=160, intermediate_size=256, num_heads=2, out_hidden_size=512)


def build(args, device: torch.device, dtype: torch.dtype):
    """The random-init model (LoRA-wrapped unless --full) and the processor with the stock template."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    fast_paths.install()  # what the study's models run (models.load_model installs them too)
    tokenizer = project_tokenizer(stock_chat_template())
    config = architecture_config(tokenizer, args.text_layers, args.vision_blocks, vocab_size=151936)
    if args.narrow:
        for key, value in NARROW_TEXT.items():
            setattr(config.text_config, key, value)
        for key, value in NARROW_VISION.items():
            setattr(config.vision_config, key, value)
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).to(device=device, dtype=dtype)
    return model, build_processor(tokenizer)


def puzzle_conversations(n: int, answers: bool) -> list[list[dict]]:
    """n think-prompt 3x3 jigsaws of the bundled photos at 504 px, with their answers when asked."""
    with tempfile.TemporaryDirectory() as tmp:
        config = PuzzleConfig(grid="3x3", source="bundled", image_size=504, n_train=n, n_test=1)
        dataset = generate_puzzles(config, Path(tmp))
        records = dataset.records("train")[:n]
        return [
            chat(r["prompt_think"], dataset.image(r), make_target(r["answer"], "think") if answers else None)
            for r in records
        ]


def unwrapped(model):
    """The Qwen2.5-VL model under the LoRA wrapper (the model itself without one)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def model_flops(model, inputs: dict, trained_weights: bool) -> float:
    """A step's model FLOPs. Forward: 2 x parameters x tokens for each part (the vision blocks on the patches, the
    merger on the merged tokens, the language model's layers and head on every token; the embedding is a lookup).
    Backward: activation gradients as much again as the forward, weight gradients once more (--full). With LoRA
    the vision tower has nothing to train and no gradient reaches it: forward only."""
    inner = unwrapped(model)
    visual, language = inner.model.visual, inner.model.language_model
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    patches = int(inputs["image_grid_thw"].prod(-1).sum())
    tokens = int(inputs["attention_mask"].sum())
    vision = 2 * ((count(visual) - count(visual.merger)) * patches + count(visual.merger) * patches // 4)
    text = 2 * (count(language) - language.embed_tokens.weight.numel() + inner.lm_head.weight.numel()) * tokens
    return 3 * (vision + text) if trained_weights else vision + 2 * text


def sft_speed(args, model, processor, device: torch.device, counted: "OperatorCount | None" = None) -> dict:
    """SFT's step time and model FLOP/s; with counted, its operators by part instead (one step after a warm-up)."""
    conversations = puzzle_conversations(args.batch, answers=True)
    inputs = {k: v.to(device) for k, v in batch(processor, conversations, train=True).items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    model.train()
    if args.checkpointing:
        model.gradient_checkpointing_enable()
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()

    def step():
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if counted is not None:
        step()  # warm-up: the optimizer's state is made in the first
        counted.counts.clear()
        with counted:
            step()
        return dict(counted.counts)
    times = []
    for number in range(args.steps + 1):
        synchronize(device)
        started = time.perf_counter()
        step()
        synchronize(device)
        if number:  # the first is warm-up
            times.append(time.perf_counter() - started)
    if args.trace:
        trace(args.trace, "SFT step", step, device)
    seconds = sorted(times)[len(times) // 2]
    flops = model_flops(model, inputs, trained_weights=args.full)
    return {
        "sft_step_s": round(seconds, 4),
        "sft_tokens_per_s": round(int(inputs["attention_mask"].sum()) / seconds, 1),
        "sft_model_tflops_per_s": round(flops / seconds / 1e12, 2),
        "sft_tokens_per_step": int(inputs["attention_mask"].sum()),
    }


@torch.no_grad()
def rollout_inputs(args, model, processor) -> dict:
    """GRPO's generation batch: --generations rows of each of --prompts jigsaw prompts, on the model's device."""
    prompts = puzzle_conversations(args.prompts, answers=False)
    inputs = batch(processor, [c for c in prompts for _ in range(args.generations)], train=False)
    return {k: v.to(model.device) for k, v in inputs.items()}


def rollout_speed(args, model, processor) -> dict:
    """Generated tokens/s of one batch of rollouts through generate, sampled as GRPO samples (sampling()). Tokens
    are counted as generated (ids past the project tokenizer's 509 decode to nothing: the head is the real 151,936)."""
    model.eval()
    inputs = rollout_inputs(args, model, processor)
    model.generate(**inputs, max_new_tokens=2, **sampling(1.0))  # warm-up
    synchronize(model.device)
    started = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=args.rollout_tokens, **sampling(1.0))
    synchronize(model.device)
    seconds = time.perf_counter() - started
    tokens = int((out[:, inputs["input_ids"].shape[1] :] != processor.tokenizer.pad_token_id).sum())
    if args.trace:
        rollout = lambda: model.generate(**inputs, max_new_tokens=16, **sampling(1.0))  # noqa: E731
        trace(args.trace, "rollouts, 16 tokens", rollout, model.device)
    return {"rollout_hf_s": round(seconds, 2), "rollout_hf_tokens_per_s": round(tokens / seconds, 1)}


def trace(path: str, part: str, run, device: torch.device) -> None:
    """Appends to path what one run() spends, by operator: its own device time on a GPU (CPU time without one),
    and the share of the wall time that the device was busy."""
    from torch.profiler import ProfilerActivity, profile

    gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    synchronize(device)
    started = time.perf_counter()
    with profile(activities=activities) as profiler:
        run()
        synchronize(device)
    wall = time.perf_counter() - started
    table = profiler.key_averages()
    key = "self_device_time_total" if gpu else "self_cpu_time_total"
    busy = sum(getattr(event, key) for event in table) / 1e6  # microseconds
    with open(path, "a") as out:
        out.write(f"## {part}: {wall:.3f} s wall (profiled), {'device' if gpu else 'CPU'} busy {busy:.3f} s\n")
        out.write(table.table(sort_by=key, row_limit=30, max_name_column_width=60) + "\n\n")


class OperatorCount(TorchDispatchMode):
    """Counts the operators dispatched while active, by the part of the model whose forward is running (watch()
    names the parts) or `outside` (the backward pass, the optimizer, generate's own work)."""

    def __init__(self):
        super().__init__()
        self.part, self.counts, self.stack = "outside", collections.Counter(), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[self.part] += 1
        return func(*args, **(kwargs or {}))

    def watch(self, module, part: str) -> None:
        def enter(*_):
            self.stack.append(self.part)
            self.part = part

        def leave(*_):
            self.part = self.stack.pop()

        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave)


def operator_counts(args, model, processor, device: torch.device) -> dict:
    """Operators of one SFT step (after a warm-up step) and of one decoding step (generate at 12 tokens less generate
    at 4, over the 8 tokens between), by part: what --operators prints."""
    counter = OperatorCount()
    inner = unwrapped(model).model
    full = set(inner.visual.fullatt_block_indexes)
    for index, block in enumerate(inner.visual.blocks):
        counter.watch(block, "vision_full_blocks" if index in full else "vision_windowed_blocks")
    for layer in inner.language_model.layers:
        counter.watch(layer, "text_layers")
    counter.watch(model, "forward_rest")  # what a part inside does not count
    sft = sft_speed(args, model, processor, device, counted=counter)
    model.eval()
    inputs = rollout_inputs(args, model, processor)
    decoding = {}
    for tokens in (4, 12):
        counter.counts.clear()
        with torch.no_grad(), counter:
            model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, **sampling(1.0))
        decoding[tokens] = counter.counts.copy()
    per_token = {part: (decoding[12][part] - decoding[4][part]) / (12 - 4) for part in decoding[12]}
    return {
        "sft_operators": sum(sft.values()),
        "sft_operators_by_part": sft,
        "decoding_operators_per_token": round(sum(per_token.values()), 1),
        "decoding_operators_by_part": {part: round(count, 1) for part, count in per_token.items()},
    }


def vllm_speed(args, model, processor) -> dict:
    """The same rollouts through vLLM from the model saved to a folder; {"vllm": why not} when it cannot run."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as err:
        return {"vllm": f"not installed ({err.name})"}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            (model.merge_and_unload() if hasattr(model, "merge_and_unload") else model).save_pretrained(tmp)
            processor.save_pretrained(tmp)
            llm = LLM(model=tmp, dtype="bfloat16", gpu_memory_utilization=0.5, limit_mm_per_prompt={"image": 1})
            prompts = puzzle_conversations(args.prompts, answers=False)
            requests = [
                {
                    "prompt": processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
                    "multi_modal_data": {"image": c[0]["content"][0]["image"]},
                }
                for c in prompts
                for _ in range(args.generations)
            ]
            params = SamplingParams(
                temperature=1.0, top_k=-1, top_p=1.0, max_tokens=args.rollout_tokens, detokenize=False
            )
            llm.generate(requests[:2], params)
            started = time.perf_counter()
            outputs = llm.generate(requests, params)
            seconds = time.perf_counter() - started
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        return {"rollout_vllm_s": round(seconds, 2), "rollout_vllm_tokens_per_s": round(tokens / seconds, 1)}
    except Exception as err:  # noqa: BLE001 - reported with the figures, the rest still stands
        return {"vllm": f"failed: {type(err).__name__}: {err}"[:300]}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-layers", type=int, default=None, help="default: all 36")
    parser.add_argument("--vision-blocks", type=int, default=None, help="default: all 32")
    parser.add_argument("--batch", type=int, default=8, help="SFT sequences a step")
    parser.add_argument("--steps", type=int, default=5, help="timed SFT steps (after one warm-up)")
    parser.add_argument("--full", action="store_true", help="train every weight (default: LoRA r 64, as the profiles)")
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--rollout-tokens", type=int, default=256)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak")
    parser.add_argument("--trace", metavar="FILE", help="append a profile of one SFT step and of rollouts to FILE")
    parser.add_argument("--operators", action="store_true", help="count the operators of the steps instead of timing")
    parser.add_argument("--narrow", action="store_true", help="cut the widths (for --operators on a CPU)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, processor = build(args, device, dtype)
    parameters = sum(p.numel() for p in model.parameters())
    if not args.full:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=64, lora_alpha=128, target_modules=LORA_TARGETS))
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "parameters": parameters,
        "finetune": "full" if args.full else "lora",
        "fast_paths": fast_paths.enabled(),
    }
    if args.operators:
        print(json.dumps(result | {"narrow": args.narrow} | operator_counts(args, model, processor, device)))
        return
    result |= sft_speed(args, model, processor, device) | rollout_speed(args, model, processor)
    peak = peak_tflops(device, args.peak_tflops)
    result["sft_mfu"] = round(result["sft_model_tflops_per_s"] / peak, 3) if peak else None
    if device.type == "cuda":
        result |= vllm_speed(args, model, processor)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""GRPO's log-probabilities with each distinct prompt run once (forgetting/shared_prompts.py) against TRL's own."""

import pytest
import torch
from trl import GRPOTrainer
from trl.trainer.utils import add_fused_lm_head

from forgetting.models import load_model
from forgetting.profiles import load_config
from forgetting.puzzle_data import generate_puzzles
from forgetting.rft import rft_examples
from forgetting.shared_prompts import DistinctRows, distinct_prompts, grpo_trainer


class Bare(grpo_trainer()):
    """Just enough of a trainer to call the log-probability method on its own."""

    def __init__(self):
        from accelerate import Accelerator

        self.accelerator = Accelerator(cpu=True)


def group_prompts(tmp_path, lora: bool, fused_head: bool = False, trainable: bool = True):
    """The micro model (fully trainable or with a LoRA adapter; TRL's fused head added before PEFT wraps it, as
    GRPOTrainer does) and 3 puzzles' think prompts, each 4 times over, left-padded as GRPO batches them."""
    config = load_config("micro")
    dataset = generate_puzzles(config.puzzles, tmp_path)
    model, processor = load_model(config.model, trainable=trainable)
    if fused_head:
        add_fused_lm_head(model, temperature=1.3, outputs=("log_probs", "entropy"))
    if lora:
        from peft import LoraConfig, get_peft_model

        from forgetting.models import LORA_TARGETS

        model = get_peft_model(model, LoraConfig(r=4, target_modules=LORA_TARGETS, init_lora_weights=False))
    examples = rft_examples(dataset, "think")[:3]
    prompts = [processor.apply_chat_template(e["prompt"], add_generation_prompt=True) for e in examples]
    from PIL import Image

    images = [Image.open(e["image"]).convert("RGB") for e in examples]
    inputs = processor(text=[p for p in prompts for _ in range(4)], images=[i for i in images for _ in range(4)],
                       return_tensors="pt", padding=True)  # fmt: skip
    return model, inputs


@pytest.fixture(params=["full", "lora"])
def group_batch(tmp_path, request):
    """3 puzzles, each prompt 4 times, with completions of different lengths (right-padded), as GRPO batches; the
    model fully trainable or with a LoRA adapter (fused head added before PEFT wraps it, as GRPOTrainer does)."""
    torch.manual_seed(0)
    model, inputs = group_prompts(tmp_path, request.param == "lora", fused_head=True)
    completions = torch.randint(10, 200, (12, 7))
    completion_mask = (torch.arange(7)[None] < torch.randint(2, 8, (12, 1))).long()
    ids = torch.cat([inputs["input_ids"], completions], 1)
    mask = torch.cat([inputs["attention_mask"], completion_mask], 1)
    mm = inputs.get("mm_token_type_ids")
    mm = torch.cat([mm, torch.zeros_like(completions)], 1) if mm is not None else None
    extra = {"pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"], "num_images": [1] * 12}
    return model, ids, mask, completion_mask, extra | {"mm_token_type_ids": mm}


def test_distinct_prompts_groups_rows_by_text_and_image():
    ids = torch.tensor([[1, 2], [1, 2], [1, 3], [1, 2]])
    mask = torch.ones_like(ids)
    pixels = torch.cat([torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(4, 3), torch.ones(4, 3)])
    grid = torch.tensor([[1, 2, 2]] * 4)
    assert distinct_prompts(ids, mask, pixels, grid) == ([0, 2, 3], [0, 0, 1, 2])


def test_shared_prompts_give_trls_logps_entropies_and_gradients(group_batch, monkeypatch):
    from forgetting import shared_prompts

    model, ids, mask, completion_mask, extra = group_batch
    trainer = Bare()
    used = []
    shared = shared_prompts.shared_prompt_logps
    monkeypatch.setattr(shared_prompts, "shared_prompt_logps", lambda *a, **k: used.append(shared(*a, **k)) or used[-1])
    results = []
    for method in (GRPOTrainer._get_per_token_logps_and_entropies, Bare._get_per_token_logps_and_entropies):
        model.zero_grad()
        logps, entropy, _ = method(trainer, model, ids, mask, 7, compute_entropy=True, **extra)
        (logps * completion_mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logps.detach(), entropy.detach(), grads))
    (logps, entropy, grads), (mine, my_entropy, my_grads) = results
    assert len(used) == 1 and used[0] is not None  # the shared path ran, once
    keep = completion_mask.bool()
    assert torch.allclose(mine[keep], logps[keep], atol=1e-4)
    assert torch.allclose(my_entropy[keep], entropy[keep], atol=1e-4)
    assert grads.keys() == my_grads.keys() and len(grads) >= 16  # every trainable tensor (full: vision tower too)
    for name, grad in grads.items():
        assert torch.allclose(my_grads[name], grad, atol=1e-5, rtol=1e-3), name


def test_no_repeated_prompt_takes_trls_path(group_batch, monkeypatch):
    model, ids, mask, _, extra = group_batch
    rows = [0, 4, 8]  # one row of each prompt
    extra = {k: v for k, v in extra.items() if k != "num_images"} | {"num_images": [1, 1, 1]}
    patches = extra["pixel_values"].split(extra["image_grid_thw"].prod(-1).tolist())
    extra |= {"pixel_values": torch.cat([patches[r] for r in rows]), "image_grid_thw": extra["image_grid_thw"][rows]}
    extra["mm_token_type_ids"] = extra["mm_token_type_ids"][rows] if extra["mm_token_type_ids"] is not None else None
    called = []
    original = GRPOTrainer._get_per_token_logps_and_entropies
    monkeypatch.setattr(
        GRPOTrainer, "_get_per_token_logps_and_entropies", lambda *a, **k: called.append(1) or original(*a, **k)
    )
    Bare()._get_per_token_logps_and_entropies(model, ids[rows], mask[rows], 7, **extra)
    assert called == [1]


def test_gradient_checkpointing_takes_trls_path(group_batch, monkeypatch):
    """With gradient checkpointing transformers keeps no cache in training (the paper profiles' setting): the
    prompts cannot be shared, and TRL's own path computes the log-probabilities."""
    model, ids, mask, _, extra = group_batch
    model.gradient_checkpointing_enable()
    model.train()
    called = []
    original = GRPOTrainer._get_per_token_logps_and_entropies
    monkeypatch.setattr(
        GRPOTrainer, "_get_per_token_logps_and_entropies", lambda *a, **k: called.append(1) or original(*a, **k)
    )
    logps, _, _ = Bare()._get_per_token_logps_and_entropies(model, ids, mask, 7, **extra)
    assert called == [1] and logps.shape == (12, 7)


@pytest.mark.parametrize("adapter", [False, True])
def test_grpo_generation_runs_each_prompt_once_and_samples_as_the_repeated_rows(tmp_path, adapter, monkeypatch):
    """shared_generate (GRPO's generation through SharedPrompts): each distinct prompt of a group batch runs once,
    and the samples are those model.generate draws from the repeated rows, seed for seed."""
    import forgetting.shared_prompts as shared

    model, inputs = group_prompts(tmp_path, adapter, trainable=False)
    settings = {"do_sample": True, "temperature": 1.3, "top_k": 0, "top_p": 1.0, "max_new_tokens": 10}
    torch.manual_seed(3)
    stock = model.generate(**inputs, **settings)
    runs, real = [], shared.prompt_cache
    monkeypatch.setattr(shared, "prompt_cache", lambda m, f, w=0: runs.append(len(f["input_ids"])) or real(m, f, w))
    torch.manual_seed(3)
    with torch.no_grad():
        found = shared.shared_generate(model, model.generate, **inputs, **settings)
    assert runs == [3] and torch.equal(found, stock)
    assert len({tuple(row) for row in stock[:, inputs["input_ids"].shape[1] :].tolist()}) > 3  # samples differ


def test_the_processor_prepares_each_distinct_row_once_and_gives_its_own_outputs(tmp_path, monkeypatch):
    """DistinctRows (the processor in a GRPO batch): TRL's two batched calls, apply_chat_template and the processor's
    own, give what the processor gives over all rows, bit for bit, having prepared each distinct prompt once."""
    from PIL import Image
    from trl.data_utils import apply_chat_template, prepare_multimodal_messages

    config = load_config("micro")
    dataset = generate_puzzles(config.puzzles, tmp_path)
    _, processor = load_model(config.model, trainable=False)
    examples = rft_examples(dataset, "think")[:3]
    prompts = [
        prepare_multimodal_messages([dict(m) for m in e["prompt"]], images=[Image.open(e["image"]).convert("RGB")])
        for e in examples
        for _ in range(4)
    ]
    texts = [apply_chat_template({"prompt": p}, processor)["prompt"] for p in prompts]
    images = [[part["image"] for part in p[0]["content"] if part["type"] == "image"] for p in prompts]
    template = {"add_generation_prompt": True, "tokenize": True, "return_dict": True}
    stock = [processor.apply_chat_template(prompts, **template), processor(images=images, text=texts, padding=True)]
    calls, real = [], type(processor).__call__
    counted = lambda self, **kw: calls.append(len(kw["text"])) or real(self, **kw)  # noqa: E731
    monkeypatch.setattr(type(processor), "__call__", counted)
    once = DistinctRows(processor)
    found = [once.apply_chat_template(prompts, **template), once(images=images, text=texts, padding=True)]
    assert calls == [3, 3]
    for ours, theirs in zip(found, stock, strict=True):
        assert set(ours) == set(theirs) and torch.equal(ours["pixel_values"], theirs["pixel_values"])
        assert all(ours[k] == theirs[k] for k in ("input_ids", "attention_mask")) and ours.image_grid_thw.shape[0] == 12

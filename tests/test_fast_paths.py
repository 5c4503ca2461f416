"""The shortcuts of forgetting/fast_paths.py compute what transformers' code computes."""

import numpy as np
import pytest
import torch
from PIL import Image

from forgetting import fast_paths
from forgetting.models import SHIPPED, load_model
from forgetting.profiles import load_config
from forgetting.puzzle_data import generate_puzzles


def test_distinct_images_finds_the_copies_and_only_them():
    grid = torch.tensor([[1, 2, 2]] * 5)  # five images of 4 patches each
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    shuffled = a[[1, 0, 2, 3]]  # the same patches in another order: the same sums, another image
    pixels = torch.cat([a, b, a, shuffled, b])
    keep, index = fast_paths.distinct_images(pixels, grid)
    assert keep == [0, 1, 3] and index == [0, 1, 0, 2, 1]
    other = torch.tensor([[1, 2, 2]] * 4 + [[1, 4, 1]])  # the same patches on another grid: another image
    assert fast_paths.distinct_images(pixels, other)[0] == [0, 1, 3, 4]


@pytest.fixture
def group_batch(tmp_path):
    """A GRPO-like batch on the micro model: 3 puzzles, each prompt 4 times."""
    config = load_config("micro")
    dataset = generate_puzzles(config.puzzles, tmp_path)
    model, processor = load_model(config.model)
    records = dataset.records("train")[:3]
    images = [dataset.image(r) for r in records for _ in range(4)]
    content = [{"type": "image"}, {"type": "text", "text": "which tile?"}]
    texts = [processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)] * 12
    return model, processor(text=texts, images=images, return_tensors="pt", padding=True)


def _forward_backward(model, batch):
    model.zero_grad()
    logits = model(**batch).logits
    logits.float().logsumexp(-1).mean().backward()
    return logits.detach(), model.model.visual.patch_embed.proj.weight.grad.clone()


def test_the_shortcuts_give_the_stock_logits_and_gradients(group_batch, monkeypatch):
    model, batch = group_batch
    seen = []
    visual = model.model.visual
    original = type(visual).forward
    monkeypatch.setattr(
        type(visual), "forward", lambda self, x, **kw: seen.append(len(kw["grid_thw"])) or original(self, x, **kw)
    )
    try:
        fast_paths.uninstall()
        stock = _forward_backward(model, batch)
        fast_paths.install()
        fast = _forward_backward(model, batch)
    finally:
        fast_paths.install()
    assert seen == [12, 3]  # the tower saw every copy, then each distinct image once
    assert torch.allclose(fast[0], stock[0], atol=1e-4, rtol=1e-4)
    assert torch.allclose(fast[1], stock[1], atol=1e-7, rtol=1e-4)


def test_the_cache_grown_in_place_samples_what_transformers_cache_samples(group_batch, monkeypatch):
    """Sampled generation with the cache grown in place: the tokens transformers' concatenating cache gives, seed
    for seed, and a layer's keys stay in one piece of memory from token to token (no copy per token)."""
    from transformers.cache_utils import DynamicLayer

    model, batch = group_batch
    settings = {"do_sample": True, "temperature": 1.3, "top_k": 0, "top_p": 1.0, "max_new_tokens": 12}
    settings |= {"min_new_tokens": 12}  # twelve forwards: the prompt's, then one a token
    storage = []
    grown = fast_paths._grow_in_place

    def watched(self, *args, **kwargs):
        out = grown(self, *args, **kwargs)
        storage.append(out[0].data_ptr())
        return out

    try:
        fast_paths.uninstall()
        torch.manual_seed(5)
        stock = model.generate(**batch, **settings)
        fast_paths.install()
        monkeypatch.setattr(DynamicLayer, "update", watched)
        torch.manual_seed(5)
        fast = model.generate(**batch, **settings)
    finally:
        monkeypatch.undo()
        fast_paths.install()
    layers = model.config.text_config.num_hidden_layers
    assert torch.equal(fast, stock) and len(storage) == layers * 12
    assert len(set(storage)) == layers  # each layer's keys allocated once, at the prompt, then written in place


def test_the_cache_keeps_transformers_update_where_autograd_needs_it():
    """With gradients, a layer concatenates as transformers does: a later write in place would change the keys
    autograd kept for the backward pass."""
    from transformers.cache_utils import DynamicLayer

    layer, keys = DynamicLayer(), torch.randn(2, 1, 3, 4, requires_grad=True)
    first, _ = fast_paths._grow_in_place(layer, keys, keys * 2)
    second, _ = fast_paths._grow_in_place(layer, keys + 1, keys)
    (first.sum() + second.sum()).backward()
    assert second.shape[-2] == 6 and not hasattr(layer, "_room") and torch.equal(keys.grad, torch.full_like(keys, 3))


def test_the_assistant_mask_marks_the_tokens_transformers_marks(tmp_path):
    """SFT's batches through TRL's collator (one image each, padded, answers of different lengths, one that repeats
    the prompt's words, two assistant turns): the same labels as with transformers' mask."""
    import copy

    from trl.chat_template_utils import get_training_chat_template
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from forgetting.trainer import trl_messages

    config = load_config("micro")
    dataset = generate_puzzles(config.puzzles, tmp_path)
    _, processor = load_model(config.model)
    records = dataset.records("train")[:3]
    answers = ["4 1 3 2", "<think>I look at the 4 cells: which tile?</think> 1 2 3 4", "1"]
    examples = [
        {"messages": trl_messages(r["prompt_direct"], a), "images": [dataset.image(r)]}
        for r, a in zip(records, answers, strict=True)
    ]
    examples[2]["messages"] += [
        {"role": "user", "content": [{"type": "text", "text": "again"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "2 1 4 3"}]},
    ]
    collate = DataCollatorForVisionLanguageModeling(
        processor, assistant_only_loss=True, chat_template=get_training_chat_template(processor)
    )
    try:
        fast_paths.uninstall()
        stock = collate(copy.deepcopy(examples))
        fast_paths.install()
        fast = collate(copy.deepcopy(examples))
    finally:
        fast_paths.install()
    assert torch.equal(fast["input_ids"], stock["input_ids"])
    assert torch.equal(fast["labels"], stock["labels"])
    learned = (stock["labels"] != -100).sum(-1).tolist()
    assert learned[1] > learned[0] > 0 and learned[2] > learned[0]


@pytest.mark.parametrize(
    ("sizes", "calls"),
    [
        ([(112, 112)] * 5, 2),  # five images, each one window: one call a block
        ([(224, 224)] * 2, 2),  # two images of four windows each: one call a block
        ([(112, 112), (168, 112)], 2 + 3),  # images of two sizes: the full block per image, the windows per window
    ],
)
def test_the_vision_tower_attends_within_images_in_one_call_bit_for_bit(sizes, calls, monkeypatch):
    """The tiny base's tower (a windowed block, then a full one) gives the same features and gradients, bit for
    bit, when images (or windows) of one size go through attention as one batch, and transformers' own per-image
    calls otherwise."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

    config = load_config("tiny")
    model, processor = load_model(config.model, str(SHIPPED["tiny"]))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    inputs = processor.image_processor(images=images, return_tensors="pt")
    assert inputs["image_grid_thw"][:, 1:].tolist() == [[h // 14, w // 14] for w, h in sizes]
    seen, real = [], torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: seen.append(1) or real(*a, **k)
    )
    visual = model.model.visual

    def features_and_gradient():
        model.zero_grad()
        features = visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
        features.square().sum().backward()
        return features.detach(), visual.blocks[0].attn.qkv.weight.grad.clone()

    fast = features_and_gradient()
    assert len(seen) == calls
    monkeypatch.setattr(qwen.Qwen2_5_VLVisionAttention, "forward", fast_paths._ORIGINAL["vision_attention"])
    stock = features_and_gradient()
    assert torch.equal(fast[0], stock[0]) and torch.equal(fast[1], stock[1])


def test_the_switch_turns_them_off(monkeypatch):
    from transformers.cache_utils import DynamicLayer
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen
    from transformers.processing_utils import ProcessorMixin

    monkeypatch.setenv("FORGETTING_FAST_PATHS", "0")
    fast_paths.install()
    assert qwen.Qwen2_5_VisionPatchEmbed.forward is not fast_paths._patch_embed
    assert DynamicLayer.update is not fast_paths._grow_in_place
    assert ProcessorMixin._adjust_assistant_masks_indices is not fast_paths._assistant_masks
    assert qwen.Qwen2_5_VLVisionAttention.forward is not fast_paths._vision_attention
    monkeypatch.setenv("FORGETTING_FAST_PATHS", "1")
    fast_paths.install()
    assert qwen.Qwen2_5_VisionPatchEmbed.forward is fast_paths._patch_embed
    assert DynamicLayer.update is fast_paths._grow_in_place
    assert ProcessorMixin._adjust_assistant_masks_indices is fast_paths._assistant_masks
    assert qwen.Qwen2_5_VLVisionAttention.forward is fast_paths._vision_attention

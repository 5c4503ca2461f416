"""The shortcuts of forgetting/fast_paths.py compute what transformers' code computes."""

import random

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
        ([(112, 112), (168, 112)], 2 + 2),  # windows of 64, 64, 32 patches: two calls; images of 64 and 96: two
        ([(168, 112), (112, 112), (168, 112)], 2 + 2),  # windows 64, 32, 64, 64, 32; images 96, 64, 96: out of order
    ],
)
def test_the_vision_tower_attends_within_images_in_one_call_bit_for_bit(sizes, calls, monkeypatch):
    """The tiny base's tower (a windowed block, then a full one) gives the same features and gradients, bit for
    bit, when the images (or windows) of each length go through attention as one batch as when transformers calls
    it once per image or window."""
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


@pytest.mark.parametrize(
    "temperature, loss_weight, entropy_weight", [(1.0, 1, 0), (1.3, 1, 0), (1.3, 1, 0.1), (1.3, 0, 1)]
)
@pytest.mark.parametrize("scored", ["answers", "all"])
def test_trls_fused_head_gives_the_same_log_probs_and_gradients_bit_for_bit(
    group_batch, temperature, loss_weight, entropy_weight, scored, monkeypatch
):
    """TRL's fused LM head (what SFTTrainer and GRPOTrainer train through) on the micro model, labels on each row's
    last 3 tokens (most rows without a gradient: the narrowed backward) or on every token (the fallback), a loss of
    log-probabilities, entropies or both: the same log-probabilities, entropies, top-1 flags and parameter
    gradients as TRL's own code, bit for bit."""
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    model, batch = group_batch
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    if scored == "answers":
        labels[:, :-3] = -100
    trl_utils.add_fused_lm_head(model, temperature=temperature, outputs=("log_probs", "entropy", "is_top1"))

    def run():
        model.zero_grad()
        out = model(**batch, labels=labels, fused_lm_head=True)
        (loss_weight * out.loss + entropy_weight * out.entropy.sum()).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return [out.log_probs.detach(), out.entropy.detach(), out.is_top1, *grads]

    fast_paths.install()
    trl_patches = {
        "chunked_logprob": (trl_utils, "_ChunkedLogProbFunction"),
        "chunked_backward": (chunked_logprob, "_backward_tile"),
    }
    try:
        fast = run()
        with monkeypatch.context() as stock_trl:  # TRL's code, every other shortcut as it was
            for name, (owner, attribute) in trl_patches.items():
                stock_trl.setattr(owner, attribute, fast_paths._ORIGINAL[name])
            stock = run()
    finally:
        del model.forward  # the fused head is an attribute on the instance
    assert len(fast) == len(stock) > 10
    assert all(torch.equal(a, b) for a, b in zip(fast, stock, strict=True))


def _rope_batch(rng: random.Random):
    """Rows of text and 0-2 images (random grids), kept tokens placed left-padded, right-padded or scattered among
    padding (common_prefix's order), padding of any type; (input_ids, mm_token_type_ids, image_grid_thw, mask)."""
    rows, grids = [], []
    for _ in range(rng.randint(1, 8)):
        row = []
        for _ in range(rng.randint(0, 2)):
            grids.append((1, 2 * rng.randint(1, 4), 2 * rng.randint(1, 4)))
            row += [0] * rng.randint(0, 4) + [1] * (grids[-1][1] * grids[-1][2] // 4)
        rows.append(row + [0] * rng.randint(0 if row else 1, 6))
    length = max(map(len, rows)) + rng.randint(0, 4)
    types = torch.tensor([[rng.choice([0, 0, 1]) for _ in range(length)] for _ in rows])
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        left = rng.randint(0, length - len(row))
        where = sorted(rng.sample(range(length), len(row))) if rng.random() < 0.3 else range(left, left + len(row))
        for column, kind in zip(where, row, strict=True):
            types[i, column], mask[i, column] = kind, 1
    grid = torch.tensor(grids).reshape(-1, 3)
    return torch.randint(0, 50, mask.shape), types, grid, mask


def test_the_rope_index_in_tensor_operations_is_transformers_own(group_batch):
    """Random batches (images of random grids, any padding): the same positions and offsets as transformers'
    get_rope_index, integer for integer, or the same error where it rejects the batch."""
    model, _ = group_batch
    fast_paths.install()
    stock, rng, outcomes = fast_paths._ORIGINAL["rope_index"], random.Random(0), []
    for _ in range(200):
        ids, types, grid, mask = _rope_batch(rng)
        found = []
        for rope_index in (stock, fast_paths._rope_index):
            try:
                found.append(
                    rope_index(model.model, ids, mm_token_type_ids=types, image_grid_thw=grid, attention_mask=mask)
                )
            except Exception as err:  # noqa: BLE001 - the same failure is what is compared
                found.append(type(err))
        if isinstance(found[0], tuple):
            assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(*found, strict=True))
        else:
            assert found[0] is found[1]
        outcomes.append(isinstance(found[0], tuple))
    assert 100 < sum(outcomes) < 200  # most batches computed, some rejected


@pytest.mark.parametrize("threads", [1, 2])
def test_rms_norm_is_transformers_own_bit_for_bit_in_float32(threads):
    """The text model's norms (width 128) and the vision tower's (width 64, another epsilon) over batches of the
    shapes the arms and the evaluation run, at small and large scales: the same outputs and gradients (input and
    weight) bit for bit; in bfloat16 transformers' own code runs."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen

    fast_paths.install()
    stock, before = fast_paths._ORIGINAL["rms_norm"], torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    try:
        for width, eps, shape in [(128, 1e-5, (16, 87)), (128, 1e-5, (64, 1)), (64, 1e-6, (1024,)), (128, 1e-5, (3,))]:
            norm = qwen.Qwen2_5_VLRMSNorm(width, eps)
            torch.nn.init.normal_(norm.weight)
            for scale in (1e-3, 1.0, 50.0):
                hidden = torch.randn(*shape, width) * scale
                grad = torch.randn(*shape, width)
                found = []
                for forward in (stock, fast_paths._rms_norm):
                    x = hidden.clone().requires_grad_()
                    norm.zero_grad()
                    out = forward(norm, x)
                    out.backward(grad)
                    found.append((out.detach(), x.grad, norm.weight.grad.clone()))
                assert all(torch.equal(a, b) for a, b in zip(*found, strict=True)), (width, shape, scale)
        half = qwen.Qwen2_5_VLRMSNorm(128).to(torch.bfloat16)
        x = torch.randn(4, 128, dtype=torch.bfloat16)
        assert torch.equal(fast_paths._rms_norm(half, x), stock(half, x))
    finally:
        torch.set_num_threads(before)


def test_the_switch_turns_them_off(monkeypatch):
    from transformers.cache_utils import DynamicLayer
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen
    from transformers.processing_utils import ProcessorMixin
    from trl.kernels import chunked_logprob
    from trl.trainer import utils as trl_utils

    monkeypatch.setenv("FORGETTING_FAST_PATHS", "0")
    fast_paths.install()
    assert trl_utils._ChunkedLogProbFunction is chunked_logprob.ChunkedLogProbFunction
    assert chunked_logprob._backward_tile is not fast_paths._backward_rows
    assert qwen.Qwen2_5_VisionPatchEmbed.forward is not fast_paths._patch_embed
    assert DynamicLayer.update is not fast_paths._grow_in_place
    assert ProcessorMixin._adjust_assistant_masks_indices is not fast_paths._assistant_masks
    assert qwen.Qwen2_5_VLVisionAttention.forward is not fast_paths._vision_attention
    assert qwen.Qwen2_5_VLModel.get_rope_index is not fast_paths._rope_index
    assert qwen.Qwen2_5_VLRMSNorm.forward is not fast_paths._rms_norm
    monkeypatch.setenv("FORGETTING_FAST_PATHS", "1")
    fast_paths.install()
    assert qwen.Qwen2_5_VisionPatchEmbed.forward is fast_paths._patch_embed
    assert DynamicLayer.update is fast_paths._grow_in_place
    assert ProcessorMixin._adjust_assistant_masks_indices is fast_paths._assistant_masks
    assert qwen.Qwen2_5_VLVisionAttention.forward is fast_paths._vision_attention
    assert qwen.Qwen2_5_VLRMSNorm.forward is fast_paths._rms_norm
    assert qwen.Qwen2_5_VLModel.get_rope_index is fast_paths._rope_index
    assert trl_utils._ChunkedLogProbFunction is fast_paths._VocabularyWideTiles
    assert chunked_logprob._backward_tile is fast_paths._backward_rows


def test_libraries_without_a_replaced_method_stop_the_first_model_load_naming_it(monkeypatch):
    """A transformers older than pyproject's floor (5.17 has no ProcessorMixin._adjust_assistant_masks_indices)
    stops at the first model load with the versions to install, not with an AttributeError inside an arm; with
    the faster paths off the libraries' own code runs and nothing is checked."""
    from transformers.processing_utils import ProcessorMixin

    from forgetting.config import ConfigError

    config = load_config("micro").model
    load_model(config)
    fast_paths.uninstall(("assistant_masks",))  # transformers' own method back, then gone
    monkeypatch.delattr(ProcessorMixin, "_adjust_assistant_masks_indices")
    with pytest.raises(ConfigError, match=r"transformers \S+ / trl \S+ lack ProcessorMixin\._adjust_assistant_ma"):
        load_model(config)
    with pytest.raises(ConfigError, match=r"install the versions pyproject.toml asks for \(transformers>=5.24\)"):
        fast_paths.install()
    monkeypatch.setenv("FORGETTING_FAST_PATHS", "0")
    load_model(config)
    monkeypatch.undo()  # transformers' method and the switch as they were
    fast_paths.install()
    assert ProcessorMixin._adjust_assistant_masks_indices is fast_paths._assistant_masks

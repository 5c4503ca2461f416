"""The model calls every stage shares: batched generation and the log-probability of given continuations,
both through forgetting/models.py:batch, the processor path training and TRL use.
"""

import torch

from forgetting.models import batch


@torch.no_grad()
def generate(
    model, processor, conversations: list[list[dict]], max_new_tokens: int, batch_size: int = 64, **sampling
) -> list[str]:
    """Completions (text after the prompt, special tokens dropped) for prompt-only conversations, in batches."""
    was_training = model.training
    model.eval()
    texts = []
    for i in range(0, len(conversations), batch_size):
        inputs = batch(processor, conversations[i : i + batch_size], train=False)
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, **sampling)
        texts += processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    model.train(was_training)
    return texts


@torch.no_grad()
def continuation_logprobs(
    model, processor, prompts: list[list[dict]], continuations: list[str], batch_size: int = 64
) -> list[tuple[float, int, bool]]:
    """For each (prompt conversation, continuation text): the summed log-probability of the continuation's
    tokens right after the opened assistant turn (what `generate` would continue from), their count, and
    whether greedy decoding would produce them. Chat-template tokens (<|im_end|>) are not counted."""
    was_training = model.training
    model.eval()
    tokenizer = processor.tokenizer
    out = []
    for i in range(0, len(prompts), batch_size):
        inputs = batch(processor, prompts[i : i + batch_size], train=False)
        ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations[i : i + batch_size]]
        width = max(len(x) for x in ids)
        if width == 0:
            out += [(0.0, 0, True)] * len(ids)
            continue
        pad = tokenizer.pad_token_id or 0
        cont = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        prompt_len = inputs["input_ids"].shape[1]
        for key, value in list(inputs.items()):  # right-pad every per-token tensor with the continuation
            if key == "input_ids":
                inputs[key] = torch.cat([value, cont], dim=1)
            elif key == "attention_mask":
                inputs[key] = torch.cat([value, mask], dim=1)
            elif value.dim() == 2 and value.shape[1] == prompt_len and key not in ("pixel_values", "image_grid_thw"):
                inputs[key] = torch.cat([value, torch.zeros_like(cont, dtype=value.dtype)], dim=1)
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        logits = model(**inputs).logits[:, prompt_len - 1 : -1].float()
        logp = torch.log_softmax(logits, dim=-1)
        target = cont.to(logp.device)
        token_logp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        greedy = logits.argmax(-1) == target
        mask = mask.to(logp.device).bool()
        for row in range(len(ids)):
            m = mask[row]
            out.append((token_logp[row][m].sum().item(), int(m.sum()), bool(greedy[row][m].all())))
    model.train(was_training)
    return out

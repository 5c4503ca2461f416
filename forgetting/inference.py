"""The model calls every stage shares: batched generation and the log-probability of given continuations,
both through forgetting/models.py:batch, the processor path training and TRL use.
"""

from dataclasses import dataclass

import torch

from forgetting.models import batch


def sampling(temperature: float, top_p: float = 1.0, top_k: int = 0) -> dict:
    """generate's keywords for sampling at temperature, as TRL's GRPO samples its rollouts: no top-k or top-p cut
    unless asked (transformers fills an unset top_k with 50; forgetting/models.py:neutral_generation keeps a
    checkpoint's own settings out)."""
    return {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p}


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


def continuation_logprobs(
    model, processor, prompts: list[list[dict]], continuations: list[str], batch_size: int = 64
) -> list[tuple[float, int, bool]]:
    """For each (prompt conversation, continuation text): the summed log-probability of the continuation's
    tokens right after the opened assistant turn (what `generate` would continue from), their count, and
    whether greedy decoding would produce them. Chat-template tokens (<|im_end|>) are not counted."""
    scored = token_logprobs(model, processor, prompts, continuations, batch_size)
    return [(s.total, len(s.logprobs), s.greedy) for s in scored]


@dataclass(frozen=True)
class Scored:
    """One continuation scored token by token: each token's log-probability and the character offset in the
    continuation where it starts; greedy: whether greedy decoding would produce every token."""

    logprobs: list[float]
    starts: list[int]
    greedy: bool

    @property
    def total(self) -> float:
        """The continuation's log-probability: the sum over its tokens."""
        return sum(self.logprobs)

    def split(self, at: int) -> tuple[list[float], list[float]]:
        """The log-probabilities of the tokens that start before character `at`, and of the rest."""
        before = [lp for lp, start in zip(self.logprobs, self.starts, strict=True) if start < at]
        return before, self.logprobs[len(before) :]


@torch.no_grad()
def token_logprobs(
    model, processor, prompts: list[list[dict]], continuations: list[str], batch_size: int = 64
) -> list[Scored]:
    """continuation_logprobs token by token (see Scored)."""
    was_training = model.training
    model.eval()
    tokenizer = processor.tokenizer
    out = []
    for i in range(0, len(prompts), batch_size):
        inputs = batch(processor, prompts[i : i + batch_size], train=False)
        encoded = [
            tokenizer(c, add_special_tokens=False, return_offsets_mapping=True)
            for c in continuations[i : i + batch_size]
        ]
        ids = [e["input_ids"] for e in encoded]
        starts = [[start for start, _ in e["offset_mapping"]] for e in encoded]
        width = max(len(x) for x in ids)
        if width == 0:
            out += [Scored([], [], True)] * len(ids)
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
            out.append(Scored(token_logp[row][m].tolist(), starts[row], bool(greedy[row][m].all())))
    model.train(was_training)
    return out

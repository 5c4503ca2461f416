"""What each arm trained on, as the base model sees it: its prompt style, where its data came from, and the
base's NLL per token of that data, split into reasoning and answer tokens (forgetting/evaluation.py:data_nll
scores it). Part of the report (forgetting/report.py).
"""

import math

import pandas as pd

from forgetting.metrics import arm_order
from forgetting.tables import markdown_table

DATA_METRICS = ("data_nll", "data_nll_reasoning", "data_nll_answer")


def training_data_summary(data_nll: dict[str, dict]) -> dict[str, dict]:
    """Per arm: its prompt style, where its data came from (rollout_sft: the rollouts' source, RFT checkpoint and
    step, how many were exact and kept), examples scored, tokens per example in the reasoning and the answer,
    and the base's NLL per token of all of them (data_nll), of the reasoning and of the answer."""
    out = {}
    for arm, v in sorted(data_nll.items(), key=lambda kv: arm_order(kv[0])):
        n = v.get("examples", 0) or math.nan  # records from before the split say less
        out[arm] = {
            "prompt_style": v.get("prompt_style", "direct"),
            "source": v.get("rollout_source"),
            "examples": v.get("examples"),
            # records from before the weighted sample give their sample's token counts
            "reasoning_tokens": v.get("reasoning_tokens_per_example", v.get("reasoning_tokens", math.nan) / n),
            "answer_tokens": v.get("answer_tokens_per_example", v.get("answer_tokens", math.nan) / n),
            "data_nll": v["nll_per_token"],
            "data_nll_reasoning": v.get("nll_per_token_reasoning", math.nan),
            "data_nll_answer": v.get("nll_per_token_answer", math.nan),
        }
    return out


def stopped_arms(training_data: dict[str, dict]) -> dict[str, str]:
    """arm -> where and why it stopped, for the arms whose data say they ended before their last step (iterative
    self-SFT at a round that kept no answer: forgetting/iterative_sft.py), from training_data_summary."""
    return {
        arm: f"round {stop['round']} (after step {stop['step']}), {stop['reason']}"
        for arm, v in training_data.items()
        if (stop := (v.get("source") or {}).get("stopped"))
    }


def source_text(arm: str, source: dict | None) -> str:
    """Where an arm's data came from, in words, from its rollout_source.json: for rollout_sft 'final RFT model
    (step 200): 3,120 of 4,000 rollouts exact, 1,571 kept', for iterative_sft 'own samples, 4 rounds, exact
    141, 1,410, 2,512, 3,003 of 4,000 each, 130, 1,107, ... kept', and where it stopped when a round had no
    exact answer."""
    if not source:
        return {"sft": "ground-truth answers", "teacher_sft": "teacher's explanation + answer"}.get(arm, "own rollouts")
    if source["source"] == "rounds":
        rounds = source["rounds"]
        exact, kept = (", ".join(f"{r[key]:,}" for r in rounds) for key in ("exact", "kept"))
        text = f"own samples, {len(rounds)} rounds, exact {exact} of {rounds[0]['rollouts']:,} each, {kept} kept"
        if stop := source.get("stopped"):
            text += (
                f"; stopped in round {stop['round']} ({stop['reason']}): its final model is its step-{stop['step']} "
                "model"
            )
        return text
    where = {"training": "RFT's own training rollouts", "final": "final RFT model", "early": "early RFT checkpoint"}
    return (
        f"{where[source['source']]} (step {source['rft_step']}): {source['exact']:,} of {source['rollouts']:,} "
        f"rollouts exact, {source['kept']:,} kept"
    )


def training_data_markdown(data: dict[str, dict]) -> str:
    """The report's section on what each arm trained on (metrics.py:training_data_summary)."""
    rows = [
        {
            "arm": arm,
            "prompt_style": v["prompt_style"],
            "data": source_text(arm, v["source"]),
            "reasoning_tokens": v["reasoning_tokens"],
            "answer_tokens": v["answer_tokens"],
            "data_nll": v["data_nll"],
            "data_nll_reasoning": v["data_nll_reasoning"],
            "data_nll_answer": v["data_nll_answer"],
        }
        for arm, v in data.items()
    ]
    return (
        "\n### Training data, as the base model sees it\n\nPer arm: its prompt style, its data, tokens per example "
        "in the reasoning (everything before `<answer>`) and in the answer, and the base model's NLL per token of "
        "all of them, of the reasoning and of the answer (up to 512 examples; empty: none).\n\n"
        + markdown_table(pd.DataFrame(rows))
    )


def sources_by_seed(data: dict) -> str:
    """Each arm's prompt style and data, per seed (the base's NLL of them is in the table above)."""
    arms = dict.fromkeys(arm for by_arm in data.values() for arm in by_arm)
    lines = [
        f"- `{arm}` ({next(d[arm]['prompt_style'] for d in data.values() if arm in d)} prompt): "
        + "; ".join(f"seed {s}: {source_text(arm, d[arm]['source'])}" for s, d in data.items() if arm in d)
        for arm in arms
    ]
    return "\n### Training data\n\n" + "\n".join(lines) + "\n" if lines else ""

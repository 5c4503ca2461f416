"""Pretraining step time: one padded batch against the same items split into length groups, and the grouped
step with the vision tower's auxiliary heads (pretrain.vision_aux_weight).

    .venv/bin/python benchmarks/pretrain_step.py --batch-size 16 --steps 20

Both sides take the same items (every prior-knowledge task drawn equally, as pretraining does) on the same
freshly built tiny model, in one process with fixed torch threads, alternating step by step which goes
first; each side does forward and backward (the weights do not change, so both see the same model).
Reported: median seconds per step, the ratios grouped / padded and grouped+aux / grouped, and the largest
difference between the padded and grouped losses (the same loss, computed in groups).
"""

import argparse
import statistics
import time

import torch

from forgetting.config import PretrainConfig
from forgetting.pretrain import backward_by_length, build_base, item_batch, per_item_loss, train_batches
from forgetting.vision_heads import VisionAux


def padded_step(model, processor, items) -> float:
    loss, _ = per_item_loss(model, item_batch(processor, items))
    loss.backward()
    return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = PretrainConfig(batch_size=args.batch_size)
    model, processor = build_base("tiny", config)
    aux = VisionAux(model, processor, config.seed, weight=1.0)
    sides = {
        "padded": padded_step,
        "grouped": lambda model, processor, items: backward_by_length(model, processor, items)[0],
        "grouped+aux": lambda model, processor, items: backward_by_length(model, processor, items, aux)[0],
    }
    times = {name: [] for name in sides}
    gaps = []
    for step, items in zip(range(args.steps), train_batches(config), strict=False):
        order = list(sides)[step % 3 :] + list(sides)[: step % 3]
        losses = {}
        for name in order:
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            losses[name] = sides[name](model, processor, items)
            times[name].append(time.perf_counter() - start)
        gaps.append(abs(losses["padded"] - losses["grouped"]))
    padded, grouped, with_aux = (statistics.median(times[name][2:]) for name in sides)
    print(f"batch {args.batch_size}, {args.steps} steps, {args.threads} threads (first 2 left out)")
    print(f"padded  {padded:.3f} s/step")
    print(f"grouped {grouped:.3f} s/step   ratio grouped/padded {grouped / padded:.2f}")
    print(f"grouped+aux {with_aux:.3f} s/step   ratio grouped+aux/grouped {with_aux / grouped:.2f}")
    print(f"largest loss difference {max(gaps):.2e}")


if __name__ == "__main__":
    main()

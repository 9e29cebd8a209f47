"""Training-step time of the l0 pruning phase over plain fine-tuning (issue 3 target: <= 1.3x).

Same model (default MiniLM), same fixed batches of real SST-2 phrases, same optimizer;
the pruning step adds the hard-concrete gates (all five unit types) through hooks, the
Lagrangian penalty, and the gate and multiplier optimizer steps.

    python bench/step_time.py --steps 30 --batch-size 32 --max-length 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import datasets
import torch
import transformers

from spruce.compact import apply_masks
from spruce.data import TaskDataConfig, load_task
from spruce.masks.control import SparsityController, SparsityStep, make_optimizers
from spruce.masks.gates import EncoderGates
from spruce.models import encoder_shape, load_classifier
from spruce.pipelines.common import build_loaders
from spruce.train import TrainConfig


def time_steps(model, batches, step_extra=None, penalty=None) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    times = []
    for batch in batches:
        start = time.perf_counter()
        loss = model(**batch).loss
        if penalty is not None:
            loss = loss + penalty()
        loss.backward()
        optimizer.step()
        if step_extra is not None:
            step_extra()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[2:]  # the first steps warm up allocator and kernels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default="../shared/data/sst2/train.tsv")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench/step_time.json"))
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    task = load_task(TaskDataConfig(train=args.train, max_train_samples=args.steps
                                    * args.batch_size, seed=0))  # fmt: skip
    model, tokenizer, _ = load_classifier(None, task.label_names)
    config = TrainConfig(batch_size=args.batch_size, seed=0)
    batches = list(build_loaders(task, tokenizer, config, args.max_length)["train"])
    plain = time_steps(model, batches)

    gates = EncoderGates(encoder_shape(model.config))
    controller = SparsityController(0.9, warmup_steps=len(batches))
    step = SparsityStep(controller, *make_optimizers(gates, controller))
    with apply_masks(model, gates):
        pruning = time_steps(model, batches, lambda: step(None, 1, {}),
                             lambda: controller.gate_penalty(gates))  # fmt: skip
    result = {
        "plain_step_s": statistics.median(plain),
        "pruning_step_s": statistics.median(pruning),
        "ratio": statistics.median(pruning) / statistics.median(plain),
        "steps": len(plain),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "threads": args.threads,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

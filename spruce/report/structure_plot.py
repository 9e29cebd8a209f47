"""Heat map of what pruning kept: heads and FFN units per layer, hidden size in the title."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np


def _hidden(structure: dict[str, Any]) -> int:
    # Accept both the report's {"hidden": D} and EncoderShape.to_dict()'s {"hidden_size": D}.
    return int(structure.get("hidden", structure.get("hidden_size", 0)))


def plot_structure_heatmap(
    structure: dict[str, Any], dense: dict[str, Any], path: str | Path, title: str = ""
) -> None:
    """Write a PNG: one row per layer, columns "heads" and "FFN", each cell coloured by the
    fraction kept (0 = removed, 1 = all kept) and annotated ``k/H`` / ``f/F``.

    ``structure`` and ``dense`` are ``{"hidden": int, "layers": [{"heads": int, "ffn":
    int}, ...]}`` for the pruned and the unpruned model (same number of layers).
    """
    layers, dense_layers = structure["layers"], dense["layers"]
    if len(layers) != len(dense_layers):
        raise ValueError(f"{len(layers)} pruned layers but {len(dense_layers)} dense layers")
    kept = np.array([[layer["heads"], layer["ffn"]] for layer in layers], dtype=float)
    full = np.array([[layer["heads"], layer["ffn"]] for layer in dense_layers], dtype=float)
    fraction = np.divide(kept, full, out=np.zeros_like(kept), where=full > 0)

    n = len(layers)
    fig, ax = plt.subplots(figsize=(4.8, 1.2 + 0.45 * max(n, 1)))
    image = ax.imshow(fraction, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for row in range(n):
        for col in range(2):
            # Dark text on the bright (mostly kept) end of viridis, white on the dark end.
            colour = "black" if fraction[row, col] > 0.6 else "white"
            ax.text(
                col,
                row,
                f"{int(kept[row, col])}/{int(full[row, col])}",
                ha="center",
                va="center",
                color=colour,
                fontsize=9,
            )
    ax.set_xticks([0, 1], ["heads", "FFN units"])
    ax.set_yticks(range(n), [f"layer {i}" for i in range(n)])
    ax.xaxis.tick_top()
    fig.colorbar(image, ax=ax, label="fraction kept", fraction=0.08, pad=0.04)

    hidden, dense_hidden = _hidden(structure), _hidden(dense)
    heads, ffn = kept.sum(axis=0) if n else (0, 0)
    heads_full, ffn_full = full.sum(axis=0) if n else (0, 0)
    summary = (
        f"hidden {hidden}/{dense_hidden} · heads {int(heads)}/{int(heads_full)} · "
        f"FFN {int(ffn)}/{int(ffn_full)}"
    )
    ax.set_title(f"{title}\n{summary}" if title else summary, fontsize=9, pad=24)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""PNG heatmaps of the text attention alpha_t and the masked multimodal attention W_m (paper, Figure 4).

Word-pieces on both axes; a row is a query word-piece, a column the word-piece it attends to.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cmbert import storage  # noqa: E402


def attention_png(tokens: list[str], matrices: dict[str, np.ndarray], title: str = "") -> bytes:
    """One panel per matrix (e.g. {"alpha_t": ..., "W_m": ...}), each (n, n) for n tokens; returns PNG bytes."""
    n = len(tokens)
    size = max(3.0, 0.28 * n + 1.5)
    fig, axes = plt.subplots(1, len(matrices), figsize=(size * len(matrices), size), squeeze=False)
    for ax, (name, m) in zip(axes[0], matrices.items()):
        m = np.asarray(m, dtype=np.float32)[:n, :n]
        im = ax.imshow(m, cmap="viridis", aspect="equal")
        ax.set_title(name)
        ax.set_xticks(range(n), tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(n), tokens, fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_attention_heatmaps(tokenizer, attention: dict[int, dict], rows: list[dict], scores, out_uri: str) -> list[str]:
    """Write one PNG per utterance in ``attention`` (as ``collate.predict_rows`` returns it) under ``out_uri``."""
    dest = storage.locate(out_uri)
    written = []
    for i, att in sorted(attention.items()):
        row = rows[i]
        tokens = tokenizer.convert_ids_to_tokens(att["input_ids"])
        label = row.get("label")
        title = (f"{row.get('utterance_id', i)}  score {float(scores[i]):+.2f}"
                 + ("" if label is None else f"  label {float(label):+.2f}"))
        png = attention_png(tokens, {"alpha_t (text)": att["alpha_t"], "W_m (masked multimodal)": att["w_m"]},
                            title)
        name = f"{i:05d}-{_safe(str(row.get('utterance_id', i)))}.png"
        written.append(storage.write_bytes(dest.join(name), png, action="write heatmap"))
    return written


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:60]

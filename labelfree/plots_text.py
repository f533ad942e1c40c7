"""Figures of texts: one explained text's tokens coloured by their importance (matplotlib only)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from labelfree.plots import LABELS, PAGE, styled  # noqa: E402

__all__ = ["plot_token_highlight"]

#: layout of the token boxes, in characters of the monospaced font
_LINE_CHARS = 112
_CHAR_WIDTH = 1.0 / _LINE_CHARS


def _lines(tokens: Sequence[str]) -> list[list[tuple[int, str]]]:
    """Tokens (with their positions) flowed into lines of at most :data:`_LINE_CHARS` characters."""
    lines: list[list[tuple[int, str]]] = [[]]
    used = 0
    for position, token in enumerate(tokens):
        width = len(token) + 8 if token.startswith("[") else len(token) + 1
        if used + width > _LINE_CHARS and lines[-1]:
            lines.append([])
            used = 0
        lines[-1].append((position, token))
        used += width
    return lines


@styled
def plot_token_highlight(tokens: Sequence[str], scores: Mapping[str, Sequence[float]], title: str = "") -> Figure:
    """One panel per method: the text's tokens in order, each on a box coloured by its signed importance
    (red positive, blue negative, white 0; each method scaled by the largest |importance| of its content tokens).
    Special tokens (``[EOS]``, ...) are drawn on grey with their importance written after them: they are not
    content, and one of them can carry most of the attribution (the [EOS] every text ends with).

    Args:
        tokens: the text's tokens ``[T]`` (padding already left out).
        scores: method -> importance of each token ``[T]``.
        title: the figure's title.
    """
    if not scores:
        raise ValueError("plot_token_highlight needs the scores of at least one method")
    for method, values in scores.items():
        if len(values) != len(tokens):
            raise ValueError(f"{method}: {len(values)} scores for {len(tokens)} tokens")
    lines = _lines(tokens)
    cmap = plt.get_cmap("bwr")
    line_height = 0.22
    heights = [0.35 + line_height * len(lines) for _ in scores]
    fig, axes = plt.subplots(len(scores), 1, figsize=(PAGE, sum(heights) + 0.4), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (method, values) in zip(axes[:, 0], scores.items()):
        values = np.asarray(values, dtype=float)
        special = np.array([t.startswith("[") and t.endswith("]") for t in tokens], dtype=bool)
        content = np.abs(values[~special]) if (~special).any() else np.abs(values)
        scale = float(content.max()) or 1.0
        ax.set_xlim(0, 1)
        ax.set_ylim(-len(lines), 0.2)
        ax.axis("off")
        ax.set_title(LABELS.get(method, method), loc="left")
        for row, line in enumerate(lines):
            x = 0.0
            for position, token in line:
                if special[position]:
                    face, text = "lightgrey", f"{token}={values[position] / scale:+.1f}"
                else:
                    face, text = cmap(0.5 + 0.5 * values[position] / scale), token
                ax.text(x, -row - 0.5, text, family="monospace", fontsize=6.5, va="center", ha="left",
                        bbox={"boxstyle": "square,pad=0.15", "linewidth": 0, "facecolor": face})
                x += (len(text) + 1) * _CHAR_WIDTH
    fig.suptitle(title)
    fig.tight_layout()
    return fig

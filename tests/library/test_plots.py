"""Figures carry the project's style without changing the importing program's matplotlib settings."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from labelfree.plots import STYLE, plot_roar


def test_figure_functions_leave_the_callers_rcparams_alone():
    before = dict(plt.rcParams)
    frame = pd.DataFrame([{"seed": 1, "method": m, "level": k, "metric": "test_loss", "value": v}
                          for m, v in (("gradient_shap", 0.09), ("random_features", 0.05)) for k in (10.0, 20.0)])
    fig = plot_roar(frame, "ROAR")
    assert dict(plt.rcParams) == before
    assert fig.axes[0].title.get_fontsize() == STYLE["axes.titlesize"]
    plt.close(fig)


def test_saved_figures_are_byte_for_byte_reproducible(tmp_path):
    """No creation date in the PDF: regenerating a figure with the same content gives the same files."""
    import time

    import matplotlib.pyplot as plt

    from labelfree.plots import save_figure

    digests = []
    for name in ("first", "second"):
        fig, ax = plt.subplots()
        ax.plot([1, 3, 2])
        digests.append([path.read_bytes() for path in save_figure(fig, tmp_path / name)])
        time.sleep(1.1)  # a creation date would differ by at least a second
    assert digests[0] == digests[1]

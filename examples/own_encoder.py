"""Explain your own encoder with labelfree, end to end, without any labelfree model class.

What a user has: a plain ``nn.Module`` autoencoder with ``.encoder`` and ``.decoder``, their own per-example loss,
and checkpoints saved during training with ``torch.save(model.state_dict(), path)``. What this script does with
them (Crabbé & van der Schaar, 2022, "Label-free explainability for unsupervised models"):

1. feature importance: ``LabelFreeAttribution(IntegratedGradients(model.encoder))`` and one map per latent unit;
2. example importance: TracIn and influence functions (your loss, your checkpoint files), SimplEx and DKNN;
3. the paper's two checks: the representation shift when the top p% features are masked (vs a random ranking),
   and the similarity rates of the most important training examples (labels used for scoring only);
4. a figure, and a 1-D conv encoder on series ``[n, T, C]`` (``layout="channels_last"`` when masking).

Run::

    python examples/own_encoder.py --tiny            # random-ish data, a few seconds (what CI runs)
    python examples/own_encoder.py --out my_results  # a bit larger, still on the CPU in about a minute
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from captum.attr import IntegratedGradients  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from labelfree import (  # noqa: E402
    DKNN,
    InfluenceFunctions,
    LabelFreeAttribution,
    LiSSA,
    Objective,
    SimplEx,
    TracIn,
    mask_features,
    representation_shift,
    similarity_rates,
    top_feature_mask,
)


# ------------------------------------------------------------------------------------------ your models
class ConvAutoEncoder(nn.Module):
    """A small conv autoencoder for ``[n, 1, S, S]`` images (S divisible by 4): plain ``nn.Module``."""

    def __init__(self, size: int, latent: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(8 * (size // 4) ** 2, latent),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent, 8 * (size // 4) ** 2), nn.ReLU(), nn.Unflatten(1, (8, size // 4, size // 4)),
            nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(8, 1, 4, stride=2, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class SeriesEncoder(nn.Module):
    """A 1-D conv encoder for series ``[n, T, C]`` (time steps first, channels last)."""

    def __init__(self, channels: int = 1, latent: int = 4) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(channels, 8, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(4))
        self.linear = nn.Linear(32, latent)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.conv(x.transpose(1, 2)).flatten(1))


def my_loss(model: nn.Module, x: Tensor, y: Tensor | None) -> Tensor:
    """Your per-example loss: one squared reconstruction error per example, shape ``[n]`` (not a scalar)."""
    return (model(x) - x).pow(2).flatten(1).mean(dim=1)


# -------------------------------------------------------------------------------------------------- data
def make_images(n: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Noisy images with a bright square in one of four quadrants; the label is the quadrant."""
    labels = torch.randint(4, (n,), generator=generator)
    x = 0.1 * torch.rand(n, 1, size, size, generator=generator)
    half, side = size // 2, max(2, size // 4)
    for i, label in enumerate(labels.tolist()):
        top, left = (label // 2) * half + side // 2, (label % 2) * half + side // 2
        x[i, 0, top : top + side, left : left + side] += 1.0
    return x, labels


def train(model: nn.Module, x: Tensor, steps: int, every: int, folder: Path) -> list[Path]:
    """A few Adam steps on ``my_loss``; a plain ``state_dict`` file saved every ``every`` steps."""
    folder.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(1)
    paths = []
    model.train()
    for step in range(1, steps + 1):
        batch = x[torch.randint(len(x), (32,), generator=generator)]
        optimizer.zero_grad()
        my_loss(model, batch, None).mean().backward()
        optimizer.step()
        if step % every == 0:
            paths.append(folder / f"step{step}.pt")
            torch.save(model.state_dict(), paths[-1])
    model.eval()
    return paths


# ------------------------------------------------------------------------------------------ explanations
def masked_shift(encoder: nn.Module, x: Tensor, attributions: Tensor, percent: float, layout: str) -> float:
    """Mean representation shift when each input's top ``percent`` % features are set to 0."""
    mask = top_feature_mask(attributions, percent / 100, layout=layout)
    return representation_shift(encoder, x, mask_features(x, mask, 0.0)).mean().item()


def run(tiny: bool, out: Path) -> dict[str, object]:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    size, n_train, n_test = (8, 40, 8) if tiny else (16, 300, 50)
    train_x, train_y = make_images(n_train, size, generator)
    test_x, test_y = make_images(n_test, size, generator)
    model = ConvAutoEncoder(size)
    paths = train(model, train_x, steps=6 if tiny else 100, every=3 if tiny else 25, folder=out / "checkpoints")
    results: dict[str, object] = {"checkpoints": [p.name for p in paths]}

    # 1. feature importance: the encoder's IG attributions of g_x(x~) = <f(x), f(x~)>, and one map per unit
    features = LabelFreeAttribution(IntegratedGradients(model.encoder))
    attributions = features.attribute(test_x, baselines=0.0, n_steps=8 if tiny else 50)
    unit_maps = features.attribute_units(test_x, baselines=0.0, n_steps=8 if tiny else 50).abs()
    random_ranking = torch.rand(attributions.shape, generator=generator)
    results["representation_shift"] = {
        f"{p}%": {"integrated_gradients": masked_shift(model.encoder, test_x, attributions, p, "channels_first"),
                  "random": masked_shift(model.encoder, test_x, random_ranking, p, "channels_first")}
        for p in (10, 50)
    }

    # 2. example importance: your loss and your checkpoint files (learning-rate factor 1 unless given)
    objective = Objective(model, wrt="encoder", loss=my_loss)
    explainers = {
        "tracin": TracIn(objective, paths),
        "influence_functions": InfluenceFunctions(objective, LiSSA(depth=5 if tiny else 50, batch_size=16)),
        "simplex": SimplEx(model.encoder, steps=50 if tiny else 500),
        "dknn": DKNN(model.encoder),
    }
    m = max(1, n_train // 10)
    results["similarity_rates"] = {}
    scores_by_method = {}
    for name, explainer in explainers.items():
        scores = explainer.fit(train_x).attribute(test_x)  # [n_test, n_train]; no labels
        scores_by_method[name] = scores
        most, least = similarity_rates(scores, test_y, train_y, m)  # labels used for scoring only
        results["similarity_rates"][name] = {"most": most.mean().item(), "least": least.mean().item()}

    # 3. series [n, T, C]: a feature is a time step, so rank with layout="channels_last"
    series = torch.randn(n_test, 32 if tiny else 140, 1, generator=generator).cumsum(dim=1)
    series_encoder = SeriesEncoder().eval()
    series_attr = LabelFreeAttribution(IntegratedGradients(series_encoder)).attribute(series, baselines=0.0, n_steps=8)
    results["series_shift_10%"] = masked_shift(series_encoder, series, series_attr, 10, "channels_last")

    # 4. a figure: inputs, their saliency, the first latent unit's map, the top training example by TracIn
    out.mkdir(parents=True, exist_ok=True)
    top = scores_by_method["tracin"].argmax(dim=1)
    rows = [("input", test_x), ("|IG|", attributions.abs()), ("unit 0", unit_maps[:, 0]),
            ("TracIn top", train_x[top])]
    figure, axes = plt.subplots(len(rows), 4, figsize=(6, 6), squeeze=False)
    for r, (title, images) in enumerate(rows):
        for c in range(4):
            axes[r, c].imshow(images[c, 0].detach(), cmap="gray" if r in (0, 3) else "hot")
            axes[r, c].set_axis_off()
        axes[r, 0].set_title(title, fontsize=8, loc="left")
    figure.tight_layout()
    figure.savefig(out / "own_encoder.png", dpi=80)
    plt.close(figure)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random data: a few seconds (CI)")
    parser.add_argument("--out", type=Path, default=Path("outputs/own_encoder"), help="output folder")
    args = parser.parse_args()
    results = run(args.tiny, args.out)
    print(json.dumps(results, indent=2))
    print(f"figure: {args.out / 'own_encoder.png'}")


if __name__ == "__main__":
    main()

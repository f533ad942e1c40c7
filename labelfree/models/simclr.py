"""SimCLR on CIFAR-10 (Crabbé & van der Schaar, 2022): a CIFAR ResNet-18 encoder, a projection head, NT-Xent.

The explained representation is the encoder's pooled output h = f(x), ``[n, 8 * width]`` (512 at
the paper's width 64). The projection head g maps h to the 128-d space where the contrastive loss
is computed; it is used for training only (Chen et al., 2020).

NT-Xent couples the examples of a batch (every other image is a negative), so a per-example loss in
the sense of influence functions and TracIn does not exist: :attr:`SimCLR.per_example_loss` is
False and only representation-based example importance (SimplEx, DKNN) applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelfree.models.augment import SimCLRAugment
from labelfree.models.base import PretextModel

__all__ = ["BasicBlock", "CIFARResNet18", "ProjectionHead", "SimCLR", "make_simclr", "nt_xent"]


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN, plus the (projected) input, then ReLU.

    The shortcut is the identity, or a 1x1 strided convolution + BN when the shape changes. Each
    ReLU is its own, non-inplace module, so hook-based attribution methods (DeepLift, guided
    backpropagation) see every nonlinearity once.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CIFARResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem: ``[n, 3, 32, 32] -> [n, 8 * width]`` (pooled representation).

    Stem: a 3x3 convolution with stride 1 (no 7x7 stride-2 convolution, no max-pool), BN, ReLU.
    Then four stages of two :class:`BasicBlock` each with ``width``, ``2 width``, ``4 width``,
    ``8 width`` channels and strides 1, 2, 2, 2, global average pooling and flattening; no
    classifier. ``width = 64`` is the standard ResNet-18 (11.2 M parameters, 512-d output); smaller
    widths scale the compute down by about ``(64 / width)^2`` for quick CPU runs.
    """

    def __init__(self, width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be an integer >= 1, got {width!r}")
        self.width = width
        self.out_dim = 8 * width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        stages = []
        channels = width
        for multiplier, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
            out_channels = multiplier * width
            stages.append(nn.Sequential(BasicBlock(channels, out_channels, stride), BasicBlock(out_channels, out_channels)))
            channels = out_channels
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.flatten(self.pool(x))


class ProjectionHead(nn.Module):
    """SimCLR's projection head g: Linear(in, hidden) - [BN] - ReLU - Linear(hidden, out).

    Args:
        in_dim: representation size (``8 * width``).
        hidden_dim: hidden units (the paper: 2048).
        out_dim: projection size where NT-Xent is computed (the paper: 128).
        batchnorm: insert a BatchNorm1d after the first linear layer (SimCLR's TensorFlow code
            does; the paper's description and the default here do not).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128, batchnorm: bool = False) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=not batchnorm)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers += [nn.ReLU(), nn.Linear(hidden_dim, out_dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent (normalised temperature-scaled cross-entropy) per positive pair, shape ``[n]``.

    ``z1[i]`` and ``z2[i]`` are the projections of two views of example i. With the 2n projections
    ``u = normalize(cat(z1, z2))`` and cosine similarities ``s_ab = <u_a, u_b>``, anchor a whose
    positive is p(a) has the term

        l_a = -log( exp(s_{a p(a)} / tau) / sum_{b != a} exp(s_ab / tau) ),

    and pair i gets ``(l_i + l_{i+n}) / 2``. So ``nt_xent(z1, z2).mean()`` is SimCLR's loss (the mean
    over all 2n anchors), and the result is symmetric in the two views. With n = 1 the positive is
    the only candidate and the loss is 0.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent expects two projections of the same shape [n, d], got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    n = z1.shape[0]
    if n == 0:
        return z1.new_zeros(0)
    u = F.normalize(torch.cat((z1, z2)), dim=1)
    logits = (u @ u.T) / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=u.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # an anchor is not its own candidate
    positives = torch.cat((torch.arange(n, 2 * n), torch.arange(0, n))).to(u.device)
    per_anchor = F.cross_entropy(logits, positives, reduction="none")
    return 0.5 * (per_anchor[:n] + per_anchor[n:])


class SimCLR(PretextModel):
    """SimCLR (Chen et al., 2020): two augmented views of each image should have close projections.

    ``encoder`` (f, the explained representation), ``projector`` (g) and ``augment`` (a random view
    of a batch). ``forward(x) = projector(encoder(x))``.
    """

    #: NT-Xent couples the examples of a batch: loss-based example importance is not defined.
    per_example_loss = False

    def __init__(self, encoder: nn.Module, projector: nn.Module, augment: nn.Module, temperature: float = 0.5) -> None:
        super().__init__()
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.encoder = encoder
        self.projector = projector
        self.augment = augment
        self.temperature = float(temperature)

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.encoder(x))

    def perturb(self, x: Tensor) -> Tensor:
        """One random augmented view of the batch."""
        return self.augment(x)

    def pretext_loss(self, x: Tensor, y: Tensor | None = None, perturb: bool = True) -> Tensor:
        """NT-Xent per example, ``[n]``, between two random views of the batch ``x``.

        Both views go through the network as one batch of 2n (BatchNorm statistics in training
        mode are those of both views together). The value depends on the batch (its other
        examples are the negatives) and, with ``perturb=True``, on the random views.

        ``perturb=False`` uses the un-augmented batch for both views: the two projections of a
        pair are then identical (in eval mode), so this is only a degenerate check, not a
        meaningful objective; training and the trainer's validation loss use ``perturb=True``.
        ``y`` is ignored (self-supervised).
        """
        n = x.shape[0]
        views = torch.cat((self.augment(x), self.augment(x))) if perturb else torch.cat((x, x))
        z = self(views)
        return nt_xent(z[:n], z[n:], self.temperature)


def make_simclr(
    width: int = 64,
    hidden_dim: int = 2048,
    projection_dim: int = 128,
    temperature: float = 0.5,
    head_batchnorm: bool = False,
    augmentation: Mapping[str, Any] | None = None,
) -> SimCLR:
    """A :class:`SimCLR` with a :class:`CIFARResNet18` encoder of ``width`` base channels, a
    :class:`ProjectionHead` ``8 width -> hidden_dim -> projection_dim`` and :class:`SimCLRAugment`
    built from ``augmentation`` (its keyword arguments; the SimCLR defaults when None)."""
    encoder = CIFARResNet18(width)
    projector = ProjectionHead(encoder.out_dim, hidden_dim, projection_dim, batchnorm=head_batchnorm)
    options = dict(augmentation or {})
    for key in ("crop_scale", "crop_ratio"):  # configs give lists
        if key in options:
            options[key] = tuple(options[key])
    return SimCLR(encoder, projector, SimCLRAugment(**options), temperature)

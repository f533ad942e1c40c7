"""One small trainer for every model of the project.

Mini-batch training on in-memory tensors with the model's own pretext loss, early stopping on a
validation split (best weights restored), checkpoints every ``checkpoint_every`` epochs recorded as
explicit (path, learning rate) entries for TracIn, resumable after an interruption, CUDA when
available, deterministic for a seed on a given device.

Non-finite numbers stop training at once (:class:`TrainingDivergedError`, a
:class:`~labelfree.guards.NonFiniteError`): a NaN or infinite training loss (checked every batch), validation
loss, or parameter or buffer (e.g. BatchNorm running statistics; checked after every epoch, before the epoch's
state is saved), so neither a resume state nor a returned model ever holds them. The resume state
(``last.pt``) holds every random generator training draws from: Python's ``random``, NumPy's global
generator, torch's CPU and CUDA generators and the trainer's own batch-order generator; a resume state
that cannot be read is reported, moved aside (``last.pt.corrupt-<time>``) and training starts afresh.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from labelfree.guards import NonFiniteError, nonfinite_entries
from labelfree.io import load_torch, move_aside, save_torch
from labelfree.models.base import PretextModel
from labelfree.modules import eval_mode, module_device

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
SCHEDULERS = ("none", "cosine")


class TrainingDivergedError(NonFiniteError, RuntimeError):
    """Training produced a NaN or infinite number: the training or validation loss, or a parameter or buffer.

    A :class:`~labelfree.guards.NonFiniteError` (a ``ValueError``) and, as before, a ``RuntimeError``.
    """


@dataclass(frozen=True)
class Checkpoint:
    """A saved training state for TracIn: the whole model's ``state_dict`` saved with ``torch.save``
    at ``path``, and the learning rate in use when it was saved."""

    path: Path
    learning_rate: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if not math.isfinite(self.learning_rate) or self.learning_rate < 0:
            raise ValueError(f"Checkpoint learning_rate must be a finite number >= 0, got {self.learning_rate!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of the trainer (values come from the ``trainer`` and ``model`` config groups)."""

    epochs: int = 100
    batch_size: int = 300
    lr: float = 1e-3
    weight_decay: float = 1e-5
    patience: int = 10
    checkpoint_every: int = 10
    optimizer: str = "adam"
    momentum: float = 0.9
    nesterov: bool = False
    scheduler: str = "none"
    eval_batch_size: int = 1024
    #: train with convolution weights and activations in channels-last (NHWC) layout: the same function, another
    #: summation order (weights agree to float rounding, not bitwise), 1.2-1.3x faster per step for the paper's
    #: MNIST autoencoder and Burgess VAE on CPU (oneDNN). The returned model is back in the default layout.
    channels_last: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {self.optimizer!r}; accepted: {list(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"Unknown scheduler {self.scheduler!r}; accepted: {list(SCHEDULERS)}")
        for name in ("epochs", "batch_size", "patience", "checkpoint_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"trainer.lr must be > 0, got {self.lr}")


@dataclass
class TrainResult:
    """What training produced: per-epoch history, the restored best epoch and the TracIn checkpoints."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float = math.inf
    checkpoints: list[Checkpoint] = field(default_factory=list)
    #: the epoch an interrupted training resumed from (0: trained from the start in this call)
    resumed_from: int = 0


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so that the same seed gives the same numbers."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every random generator's state as tensors, numbers and lists (loadable with ``weights_only=True``):
    Python's ``random``, NumPy's global generator, torch's CPU generator, every CUDA generator when CUDA is
    available, and ``generator`` (e.g. the trainer's batch-order generator) when given."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` saved (the CUDA generators only when CUDA is available and their count matches)."""
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            log.warning("resume state holds %d CUDA generator states but %d devices are visible: CUDA generators not restored",
                        len(cuda), torch.cuda.device_count())
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"].cpu())


def _make_optimizer(model: PretextModel, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )


def _make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> Any:
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return None


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


def evaluate(model: PretextModel, x: Tensor, y: Tensor | None, batch_size: int, perturb: bool = False) -> float:
    """Mean pretext loss of ``model`` over ``(x, y)`` in eval mode, without gradients (every
    submodule's train/eval flag is restored afterwards)."""
    device = module_device(model)
    total = 0.0
    with eval_mode(model), torch.no_grad():
        for idx in _batches(len(x), batch_size, None):
            yb = y[idx].to(device) if y is not None else None
            total += float(model.pretext_loss(x[idx].to(device), yb, perturb=perturb).sum())
    return total / len(x)


def train(
    model: PretextModel,
    train_x: Tensor,
    val_x: Tensor,
    config: TrainConfig,
    seed: int,
    train_y: Tensor | None = None,
    val_y: Tensor | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """Train ``model`` in place on its pretext loss; return history and checkpoints.

    Each epoch: shuffled mini-batches of ``train_x`` (pretext perturbation on), then the validation
    loss on ``val_x`` with the perturbation too (the task being learned). Training stops after
    ``patience`` epochs without improvement; the best weights are restored. With a
    ``checkpoint_dir``, the weights after every ``checkpoint_every``-th epoch are saved for TracIn and
    the full trainer state after every epoch (``last.pt``), from which an interrupted run resumes.
    """
    if len(train_x) == 0 or len(val_x) == 0:
        raise ValueError(f"training needs non-empty train and validation sets, got {len(train_x)} and {len(val_x)}")
    if model.uses_labels and (train_y is None or val_y is None):
        raise ValueError(f"{type(model).__name__} is supervised: pass train_y and val_y")
    device = resolve_device(config.device)
    model.to(device)
    if config.channels_last:  # before the optimizer exists, so a fresh and a resumed run step alike
        model.to(memory_format=torch.channels_last)
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = _make_optimizer(model, config)
    scheduler = _make_scheduler(optimizer, config)
    result = TrainResult()
    best_state = copy.deepcopy(model.state_dict())
    start_epoch, stale = 1, 0
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    state_path = ckpt_dir / "last.pt" if ckpt_dir is not None else None

    if state_path is not None and state_path.exists():
        try:
            state = load_torch(state_path, map_location=device)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            resumed_best = state["best_model"]
            history = state["history"]
            best_epoch, best_val_loss = state["best_epoch"], state["best_val_loss"]
            checkpoints = [Checkpoint(Path(p), lr) for p, lr in zip(state["checkpoint_paths"], state["checkpoint_lrs"])]
            stale, start_epoch = state["stale"], state["epoch"] + 1
            set_rng_state(state["rng"], generator)
        except Exception as exc:  # truncated or foreign file: torch raises RuntimeError, EOFError, pickle errors, KeyError...
            moved = move_aside(state_path)
            log.warning("cannot resume from %s (%s: %s); moved it to %s and training from the start",
                        state_path, type(exc).__name__, exc, moved.name)
            # nothing of the unreadable state may survive: start exactly as a fresh run does
            model.load_state_dict(best_state)
            seed_everything(seed)
            generator.manual_seed(seed)
            optimizer = _make_optimizer(model, config)
            scheduler = _make_scheduler(optimizer, config)
            start_epoch, stale = 1, 0
        else:
            best_state = resumed_best
            result.history, result.best_epoch, result.best_val_loss = history, best_epoch, best_val_loss
            result.checkpoints, result.resumed_from = checkpoints, start_epoch
            log.info("resuming training from epoch %d (%s)", start_epoch, state_path)

    progress = tqdm(range(start_epoch, config.epochs + 1), desc=f"train {type(model).__name__}", leave=False)
    for epoch in progress:
        if stale >= config.patience:
            break
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        running, seen = 0.0, 0
        for idx in _batches(len(train_x), config.batch_size, generator):
            xb = train_x[idx].to(device)
            yb = train_y[idx].to(device) if train_y is not None else None
            loss = model.pretext_loss(xb, yb, perturb=True).mean()
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"{type(model).__name__}: loss became {float(loss.detach())} at epoch {epoch} (lr={lr}); "
                    "lower trainer.lr or check the inputs for NaN/inf values"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += float(loss.detach()) * len(idx)
            seen += len(idx)
        if scheduler is not None:
            scheduler.step()
        val_loss = evaluate(model, val_x, val_y, config.eval_batch_size, perturb=True)
        broken = nonfinite_entries(model.state_dict())
        if broken:
            raise TrainingDivergedError(
                f"{type(model).__name__}: non-finite parameters or buffers after epoch {epoch} (lr={lr}): "
                f"{', '.join(broken[:5])}{', ...' if len(broken) > 5 else ''}; lower trainer.lr or check the inputs"
            )
        if not math.isfinite(val_loss):
            raise TrainingDivergedError(
                f"{type(model).__name__}: validation loss became {val_loss} at epoch {epoch} (lr={lr}); "
                "lower trainer.lr or check the validation inputs for NaN/inf values"
            )
        result.history.append({"epoch": epoch, "lr": lr, "train_loss": running / seen, "val_loss": val_loss})
        if val_loss < result.best_val_loss:
            result.best_val_loss, result.best_epoch, stale = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        progress.set_postfix(train=f"{running / seen:.4g}", val=f"{val_loss:.4g}", best=result.best_epoch)
        if ckpt_dir is not None:
            if epoch % config.checkpoint_every == 0:
                path = save_torch(model.state_dict(), ckpt_dir / f"epoch_{epoch:04d}.pt")
                result.checkpoints.append(Checkpoint(path, lr))
            save_torch(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                    "best_model": best_state,
                    "history": result.history,
                    "best_epoch": result.best_epoch,
                    "best_val_loss": result.best_val_loss,
                    "checkpoint_paths": [str(c.path) for c in result.checkpoints],
                    "checkpoint_lrs": [c.learning_rate for c in result.checkpoints],
                    "stale": stale,
                    "epoch": epoch,
                    "rng": rng_state(generator),
                },
                state_path,
            )
    model.load_state_dict(best_state)
    if config.channels_last:
        model.to(memory_format=torch.contiguous_format)
    model.eval()
    log.info("trained %d epochs, best validation loss %.5g at epoch %d", len(result.history), result.best_val_loss, result.best_epoch)
    return result

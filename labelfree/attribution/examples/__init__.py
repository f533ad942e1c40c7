"""Label-free example importance (Crabbé & van der Schaar, 2022, "Label-free example importance").

Every explainer follows one contract (:class:`ExampleImportance`, :mod:`.base`): ``fit(train_x)`` once, then
``attribute(test_x) -> Tensor[n_test, n_train]`` where entry ``[t, i]`` is the importance of training
example ``i`` for test example ``t`` (rows = test examples, higher = more important). Scores are
always returned on the CPU; inputs may live on the CPU while the model lives on another device.

* Loss-based methods (:class:`InfluenceFunctions` in :mod:`.influence` with its solvers (:mod:`.solvers`) :class:`LiSSA`,
  :class:`Arnoldi` and :class:`Exact`; :class:`TracIn` in :mod:`.tracin`) differentiate an explicit :class:`Objective`
  (:mod:`.objective`): a per-example loss (the model's pretext loss, or any ``loss(model, x, y) -> Tensor[n]``
  for any ``nn.Module``) restricted to some parameters (the encoder's by default; a submodule, or
  parameter-name prefixes). TracIn reads checkpoints as ``Checkpoint`` objects, paths, state dicts or loaders
  (:data:`CheckpointLike`). Per-example gradients come from ``torch.func``
  (``vmap(grad(functional_call))``) in eval mode; Hessian products from :mod:`.hessian`; scores are
  matrix products of gradient matrices.
* Representation-based methods (:class:`SimplEx`, :class:`DKNN`, :mod:`.representation`) only use
  ``h = encoder(x)`` (``output=`` picks it from an encoder returning a tuple or dict).
* :class:`RandomExampleImportance` (:mod:`.random`) is the random baseline.

:mod:`.registry` maps method names to classes (:data:`EXAMPLE_EXPLAINERS`) and builds an explainer for a
model from its settings (:func:`build_example_explainer`).

No explainer leaves the model changed: weights, ``requires_grad`` flags and the train/eval mode of
every submodule are the same afterwards.
"""

from __future__ import annotations

from labelfree.attribution.examples.base import ExampleImportance, LossBasedImportance
from labelfree.attribution.examples.hessian import HessianOperator
from labelfree.attribution.examples.influence import (
    Arnoldi,
    Exact,
    InfluenceFunctions,
    InverseHessianSolver,
    LiSSA,
    TrainingHessian,
)
from labelfree.attribution.examples.objective import LossFn, Objective, Wrt, pretext_objective_loss
from labelfree.attribution.examples.random import RandomExampleImportance
from labelfree.attribution.examples.registry import (
    EXAMPLE_EXPLAINERS,
    build_example_explainer,
    example_settings,
    requires_loss,
)
from labelfree.attribution.examples.representation import DKNN, SimplEx
from labelfree.attribution.examples.solvers import LiSSADivergenceError
from labelfree.attribution.examples.shards import attribute_shard, merge_shards, shard_bounds
from labelfree.attribution.examples.tracin import CheckpointLike, TracIn, load_checkpoint
from labelfree.training import Checkpoint

__all__ = [
    "DKNN",
    "EXAMPLE_EXPLAINERS",
    "Arnoldi",
    "Checkpoint",
    "CheckpointLike",
    "ExampleImportance",
    "Exact",
    "HessianOperator",
    "InfluenceFunctions",
    "InverseHessianSolver",
    "LiSSA",
    "LiSSADivergenceError",
    "LossBasedImportance",
    "LossFn",
    "Objective",
    "RandomExampleImportance",
    "SimplEx",
    "TracIn",
    "TrainingHessian",
    "Wrt",
    "attribute_shard",
    "build_example_explainer",
    "example_settings",
    "load_checkpoint",
    "merge_shards",
    "pretext_objective_loss",
    "requires_loss",
    "shard_bounds",
]

"""Variational graph autoencoder (Kipf & Welling, 2016) on PyTorch Geometric's ``GCNConv``, for link prediction.

Encoder (:class:`GCNEncoder`): ``h = ReLU(GCN_1(X, A))`` (F -> hidden), then ``mu = GCN_mu(h, A)`` and
``logvar = GCN_sigma(h, A)`` (hidden -> d); Cora: 1433 -> 32 -> 16. Every layer takes optional edge weights
``[E]`` (1 = the edge present, 0 = removed: GCN's symmetric normalisation then ignores the edge, so a weight of 0
is exactly the edge's removal). The decoder is the inner product, ``p(A_ij = 1 | z) = sigmoid(z_i . z_j)``.

**Examples are nodes.** ``model.encoder`` (:class:`NodeEncoder`) holds the graph as buffers (the node features
and the *training* edges, the only ones message passing sees) and maps node ids ``int64 [n]`` to their
posterior means ``mu[nodes] [n, d]``: the explained representation, deterministic. The graph-level encoder
``model.encoder.gcn(x, edge_index, edge_weight) -> mu [N, d]`` is what feature importance over node features or
edges explains. The graph is bound after construction (:meth:`VGAE.bind_graph`, or :meth:`VGAE.bind_data` from
a :class:`~labelfree.data.splits.GraphSplits`); its buffers are not part of the ``state_dict``, which holds the
weights only.

**Per-node loss** (``pretext_loss(nodes) -> Tensor[n]``), with M the number of directed training edges, N the
number of nodes, ``N(i)`` node i's training neighbours and ``Neg(i)`` its ``deg_train(i)`` negative partners:

    l_i = (N / M) * [ sum_{j in N(i)} -log sigmoid(z_i . z_j) + sum_{k in Neg(i)} -log(1 - sigmoid(z_i . z_k)) ]
          + KL(q(z_i) || N(0, I)) / N.

Its mean over all nodes is the VGAE loss of PyG's example, ``recon_loss + kl_loss / N``: the mean over the
positive (training) edges, plus the mean over as many negative pairs, plus the mean KL over nodes divided by N.
``perturb=True`` (training) samples ``z = mu + exp(logvar / 2) * eps`` and fresh negatives (torch's generator,
seeded by :meth:`VGAE.train_on`); ``perturb=False`` (what TracIn and influence functions differentiate) uses
``z = mu`` and the split's fixed negatives (:attr:`EdgeSplit.node_negatives`), so it is deterministic.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GCNConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from tqdm.auto import tqdm

from labelfree.data.graph import EdgeSplit, padded_partners
from labelfree.io import save_torch
from labelfree.models.base import PretextModel
from labelfree.modules import eval_mode
from labelfree.training import (
    Checkpoint,
    TrainConfig,
    TrainingDivergedError,
    TrainResult,
    _make_optimizer,
    seed_everything,
)

if TYPE_CHECKING:
    from labelfree.data.splits import GraphSplits

log = logging.getLogger(__name__)

__all__ = ["GCNEncoder", "NodeEncoder", "SparseFeatures", "VGAE", "link_auc"]


class SparseFeatures(nn.Module):
    """A node-feature matrix ``[N, F]`` by its non-zero entries (``rows``, ``cols``, ``values``), held as buffers.

    ``project(W [H, F]) -> X W^T [N, H]`` gathers the columns of W of each non-zero entry and adds them up per row:
    the first GCN layer's product at the cost of the non-zeros (Cora: 1.3 % of the entries), differentiable in W
    and usable under ``torch.func.vmap`` (torch's sparse tensors are not), so per-node gradients and Hessian products
    do not pay for the zeros of a bag of words. Equal to the dense product up to float rounding (a test checks)."""

    rows: Tensor
    cols: Tensor
    values: Tensor

    def __init__(self, x: Tensor) -> None:
        super().__init__()
        rows, cols = x.nonzero(as_tuple=True)
        self.num_nodes, self.num_features = int(x.shape[0]), int(x.shape[1])
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.register_buffer("values", x[rows, cols].float(), persistent=False)

    def project(self, weight: Tensor) -> Tensor:
        contributions = weight.t()[self.cols] * self.values.unsqueeze(-1)
        return torch.zeros(self.num_nodes, weight.shape[0], dtype=weight.dtype, device=weight.device).index_add(
            0, self.rows, contributions)


class GCNEncoder(nn.Module):
    """Kipf & Welling's VGAE encoder on ``GCNConv`` (each layer ``D^-1/2 (A + I) D^-1/2 X W + b``, PyG's ``gcn_norm``
    applied once per call): ``posterior(x [N, F], edge_index [2, E], edge_weight [E] | None)
    -> (mu, logvar)``, each ``[N, d]``; ``forward`` returns ``mu``."""

    def __init__(self, n_features: int, hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        # the symmetric normalisation (with self-loops) is computed once per call and shared by the three layers
        self.conv = GCNConv(n_features, hidden_dim, normalize=False)
        self.conv_mu = GCNConv(hidden_dim, latent_dim, normalize=False)
        self.conv_logvar = GCNConv(hidden_dim, latent_dim, normalize=False)
        #: message-passing layers: a node's representation depends on its ``n_layers``-hop neighbourhood
        self.n_layers = 2

    def posterior(self, x: Tensor | SparseFeatures, edge_index: Tensor,
                  edge_weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
        num_nodes = x.num_nodes if isinstance(x, SparseFeatures) else x.shape[0]
        edge_index, weight = gcn_norm(edge_index, edge_weight, num_nodes, add_self_loops=True,
                                      dtype=self.conv.lin.weight.dtype)
        if isinstance(x, SparseFeatures):  # X W from the non-zero entries only; then GCNConv's propagation and bias
            hidden = self.conv.propagate(edge_index, x=x.project(self.conv.lin.weight), edge_weight=weight)
            hidden = (hidden + self.conv.bias).relu()
        else:
            hidden = self.conv(x, edge_index, weight).relu()
        return self.conv_mu(hidden, edge_index, weight), self.conv_logvar(hidden, edge_index, weight)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        return self.posterior(x, edge_index, edge_weight)[0]


class NodeEncoder(nn.Module):
    """``encoder(nodes int64 [n]) -> mu[nodes] [n, d]`` on the bound graph (buffers ``x [N, F]``, also as
    :class:`SparseFeatures`, and ``edge_index [2, E]``, not saved in the ``state_dict``)."""

    x: Tensor
    edge_index: Tensor

    def __init__(self, gcn: GCNEncoder) -> None:
        super().__init__()
        self.gcn = gcn
        self.register_buffer("x", torch.zeros(0), persistent=False)
        self.register_buffer("edge_index", torch.zeros(2, 0, dtype=torch.int64), persistent=False)
        self.sparse_x = SparseFeatures(torch.zeros(0, 0))

    def bind(self, x: Tensor, edge_index: Tensor) -> None:
        """Node features ``x [N, F]`` (kept dense, and by their non-zeros for this encoder's own forward) and the
        message-passing edges."""
        self.x, self.edge_index = x, edge_index
        self.sparse_x = SparseFeatures(x)

    @property
    def bound(self) -> bool:
        return self.x.dim() == 2 and len(self.x) > 0

    def posterior(self) -> tuple[Tensor, Tensor]:
        """``(mu, logvar)`` of every node of the bound graph, ``[N, d]`` each."""
        if not self.bound:
            raise RuntimeError("the VGAE has no graph: call model.bind_graph(x, split) (or bind_data) first")
        return self.gcn.posterior(self.sparse_x, self.edge_index)

    def forward(self, nodes: Tensor) -> Tensor:
        return self.posterior()[0][nodes.long()]


def link_auc(pos_scores: Tensor, neg_scores: Tensor) -> float:
    """Area under the ROC curve of scores of positive against negative pairs (ties count one half)."""
    pos, neg = pos_scores.double().reshape(-1, 1), neg_scores.double().reshape(1, -1)
    return float(((pos > neg).double() + 0.5 * (pos == neg).double()).mean())


class VGAE(PretextModel):
    """The variational graph autoencoder; see the module docstring for the per-node loss.

    Args:
        n_features: F, node features (Cora: 1433).
        hidden_dim: the first GCN layer's width (32).
        latent_dim: d, the posterior's dimension (16).
    """

    pos_partners: Tensor
    pos_mask: Tensor
    neg_partners: Tensor
    val_pos: Tensor
    val_neg: Tensor

    def __init__(self, n_features: int, hidden_dim: int, latent_dim: int) -> None:
        super().__init__()
        for name, value in (("n_features", n_features), ("hidden_dim", hidden_dim), ("latent_dim", latent_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VGAE {name} must be a positive integer, got {value!r}")
        self.encoder = NodeEncoder(GCNEncoder(n_features, hidden_dim, latent_dim))
        for name in ("pos_partners", "neg_partners", "val_pos", "val_neg"):
            self.register_buffer(name, torch.zeros(0, dtype=torch.int64), persistent=False)
        self.register_buffer("pos_mask", torch.zeros(0, dtype=torch.bool), persistent=False)
        self.scale = 1.0  # N / M, set by bind_graph

    @property
    def gcn(self) -> GCNEncoder:
        """The graph-level encoder ``gcn(x, edge_index, edge_weight) -> mu [N, d]``."""
        return self.encoder.gcn

    def bind_graph(self, x: Tensor, split: EdgeSplit) -> None:
        """Attach the graph: node features ``x [N, F]`` and the link split (message passing on its training edges)."""
        n_features = self.gcn.conv.in_channels
        if x.dim() != 2 or x.shape[1] != n_features:
            raise ValueError(f"node features must be [N, {n_features}], got {tuple(x.shape)}")
        device = self.gcn.conv.lin.weight.device
        num_nodes, train = len(x), split.train_edge_index
        self.encoder.bind(x.float().to(device), train.to(device))
        partners, mask = padded_partners(train, num_nodes)
        negatives, neg_mask = padded_partners(split.node_negatives, num_nodes)
        if not torch.equal(mask, neg_mask):
            raise ValueError("EdgeSplit.node_negatives must hold deg_train(i) negatives per node i")
        self.pos_partners, self.pos_mask, self.neg_partners = partners.to(device), mask.to(device), negatives.to(device)
        self.val_pos, self.val_neg = split.val_pos.to(device), split.val_neg.to(device)
        self.scale = num_nodes / max(train.shape[1], 1)

    def bind_data(self, data: GraphSplits) -> None:
        """Attach the graph of a :class:`~labelfree.data.splits.GraphSplits`."""
        self.bind_graph(data.graph.x, data.edges)

    def pretext_loss(self, x: Tensor, y: Tensor | None = None, perturb: bool = False) -> Tensor:
        """The per-node loss ``l_i`` of node ids ``x int64 [n]`` -> ``[n]`` (module docstring)."""
        nodes = x.long()
        mu, logvar = self.encoder.posterior()
        num_nodes = len(mu)
        if perturb:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            shift = torch.randint(1, num_nodes, self.neg_partners[nodes].shape, device=mu.device)
            negatives = (nodes.unsqueeze(-1) + shift) % num_nodes
        else:
            z, negatives = mu, self.neg_partners[nodes]
        mask = self.pos_mask[nodes].to(z.dtype)
        anchor = z[nodes].unsqueeze(-2)  # [n, 1, d]
        positive = (anchor * z[self.pos_partners[nodes]]).sum(-1)  # [n, D]
        negative = (anchor * z[negatives]).sum(-1)
        reconstruction = ((F.softplus(-positive) + F.softplus(negative)) * mask).sum(-1)
        mean, log_variance = mu[nodes], logvar[nodes]
        kl = 0.5 * (mean.pow(2) + log_variance.exp() - 1 - log_variance).sum(-1)
        return self.scale * reconstruction + kl / num_nodes

    def link_scores(self, pairs: Tensor) -> Tensor:
        """``sigmoid(mu_u . mu_v)`` for node pairs ``[2, k]`` (eval mode, no gradients) -> ``[k]``."""
        with eval_mode(self), torch.no_grad():
            mu = self.encoder.posterior()[0]
            return torch.sigmoid((mu[pairs[0]] * mu[pairs[1]]).sum(-1))

    def validation_loss(self) -> float:
        """Link reconstruction loss on the validation pairs at the posterior mean: mean ``-log sigmoid`` over the
        held-out edges plus mean ``-log(1 - sigmoid)`` over their negatives."""
        with eval_mode(self), torch.no_grad():
            mu = self.encoder.posterior()[0]
            pos = (mu[self.val_pos[0]] * mu[self.val_pos[1]]).sum(-1)
            neg = (mu[self.val_neg[0]] * mu[self.val_neg[1]]).sum(-1)
            return float(F.softplus(-pos).mean() + F.softplus(neg).mean())

    def train_on(self, data: GraphSplits, config: TrainConfig, seed: int,
                 checkpoint_dir: str | Path | None = None) -> TrainResult:
        """Full-batch training (every node per step) on the mean per-node loss with sampling: Adam (``config``),
        up to ``config.epochs``, early stopping after ``config.patience`` epochs without a lower
        :meth:`validation_loss` (best weights restored); the weights every ``config.checkpoint_every`` epochs saved
        under ``checkpoint_dir`` for TracIn. ``config.batch_size`` is not used (one step per epoch, as the VGAE)."""
        self.bind_data(data)
        if len(self.val_pos) == 0 or len(self.val_pos[0]) == 0:
            raise ValueError("VGAE training needs validation edges (dataset.val_edge_fraction > 0)")
        seed_everything(seed)
        optimizer = _make_optimizer(self, config)
        nodes = torch.arange(len(self.encoder.x), device=self.encoder.x.device)
        result, best_state, stale = TrainResult(), copy.deepcopy(self.state_dict()), 0
        folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
        progress = tqdm(range(1, config.epochs + 1), desc="train VGAE", leave=False)
        for epoch in progress:
            if stale >= config.patience:
                break
            self.train()
            loss = self.pretext_loss(nodes, perturb=True).mean()
            if not torch.isfinite(loss):
                raise TrainingDivergedError(f"VGAE: loss became {float(loss.detach())} at epoch {epoch}; lower trainer.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            val_loss = self.validation_loss()
            if not math.isfinite(val_loss):
                raise TrainingDivergedError(f"VGAE: validation loss became {val_loss} at epoch {epoch}; lower trainer.lr")
            lr = optimizer.param_groups[0]["lr"]
            result.history.append({"epoch": epoch, "lr": lr, "train_loss": float(loss.detach()), "val_loss": val_loss})
            if val_loss < result.best_val_loss:
                result.best_val_loss, result.best_epoch, stale = val_loss, epoch, 0
                best_state = copy.deepcopy(self.state_dict())
            else:
                stale += 1
            if folder is not None and epoch % config.checkpoint_every == 0:
                result.checkpoints.append(Checkpoint(save_torch(self.state_dict(), folder / f"epoch_{epoch:04d}.pt"), lr))
        self.load_state_dict(best_state)
        self.eval()
        log.info("VGAE: %d epochs, best validation loss %.4f at epoch %d", len(result.history), result.best_val_loss,
                 result.best_epoch)
        return result

    def describe(self) -> dict[str, Any]:
        """Sizes of the bound graph (nodes, directed training edges, validation pairs)."""
        return {"nodes": len(self.encoder.x), "train_edges": int(self.pos_mask.sum()),
                "val_pairs": int(self.val_pos.shape[-1]) if self.val_pos.dim() == 2 else 0}

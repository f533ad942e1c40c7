"""Label-free attribution for extra forward arguments, embedding layers and graph nodes / edges, each equal to
Captum's attribution of the explicitly written g(x~) = <f(x), f(x~)> (f(x) passed as an extra argument); and the
masking metrics for tokens, node features and edges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import GradientShap, IntegratedGradients, LayerIntegratedGradients, Saliency
from torch import Tensor, nn

from labelfree.attribution.features import LabelFreeAttribution
from labelfree.attribution.inputs import (
    EdgeRepresentation,
    LabelFreeForwardArgs,
    NodeRepresentation,
    edge_inputs,
    node_inputs,
    token_attributions,
)
from labelfree.metrics import (
    graph_representation_shift,
    k_hop_nodes,
    mask_node_features,
    mask_tokens,
    remove_edges,
    representation_shift,
    top_edge_mask,
    top_node_feature_mask,
    top_token_mask,
)


# ---------------------------------------------------------------------------------------------------------------
# tiny models
# ---------------------------------------------------------------------------------------------------------------


class ScaledEncoder(nn.Module):
    """f(x, s) = tanh(W x * s): an encoder with a second, per-example input that is not explained."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 3)

    def forward(self, x: Tensor, scale: Tensor) -> Tensor:
        return torch.tanh(self.linear(x) * scale)


class TextEncoder(nn.Module):
    """Token ids [n, T] -> embedding [n, T, E] -> masked mean -> tanh(linear) [n, d]."""

    def __init__(self, vocab: int = 12, dim: int = 4, latent: int = 3) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim, padding_idx=0)
        self.linear = nn.Linear(dim, latent)

    def forward(self, tokens: Tensor) -> Tensor:
        keep = (tokens != 0).unsqueeze(-1).float()
        pooled = (self.embedding(tokens) * keep).sum(1) / keep.sum(1).clamp(min=1)
        return torch.tanh(self.linear(pooled))


class GCN(nn.Module):
    """Two dense GCN layers: encoder(x [N, F], edge_index [2, E], edge_weight [E] | None) -> [N, d]."""

    def __init__(self, features: int = 4, hidden: int = 5, latent: int = 3) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(features, hidden), nn.Linear(hidden, latent)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        n = len(x)
        weight = torch.ones(edge_index.shape[1], dtype=x.dtype) if edge_weight is None else edge_weight
        adjacency = torch.zeros(n, n, dtype=x.dtype).index_put((edge_index[1], edge_index[0]), weight,
                                                                accumulate=True) + torch.eye(n)
        norm = adjacency.sum(1).rsqrt()
        adjacency = norm[:, None] * adjacency * norm[None, :]
        return adjacency @ self.second(torch.relu(adjacency @ self.first(x)))


def path_graph(n: int) -> Tensor:
    """Undirected path 0 - 1 - ... - n-1, both directions."""
    a = torch.arange(n - 1)
    return torch.cat([torch.stack([a, a + 1]), torch.stack([a + 1, a])], dim=1)


def explicit(encoder):
    """g(*x~, *args, h) = <f(*x~, *args), h> row by row, written out."""

    def g(*all_args: Tensor) -> Tensor:
        *encoder_args, h = all_args
        return (encoder(*encoder_args) * h).flatten(1).sum(1)

    return g


# ---------------------------------------------------------------------------------------------------------------
# attribution
# ---------------------------------------------------------------------------------------------------------------


def test_base_class_refuses_extra_args_and_the_passthrough_equals_captum():
    torch.manual_seed(0)
    encoder, x, scale = ScaledEncoder(), torch.randn(6, 5), torch.rand(6, 1) + 0.5
    with pytest.raises(ValueError, match="additional_forward_args"):
        LabelFreeAttribution(IntegratedGradients(encoder)).attribute(x, additional_forward_args=(scale,))
    h = encoder(x, scale).detach()
    g = explicit(encoder)
    ours = LabelFreeForwardArgs(IntegratedGradients(encoder)).attribute(
        x, additional_forward_args=(scale,), baselines=0.0, n_steps=16)
    theirs = IntegratedGradients(g).attribute(x, additional_forward_args=(scale, h), baselines=0.0, n_steps=16)
    torch.testing.assert_close(ours, theirs)
    ours = LabelFreeForwardArgs(Saliency(encoder)).attribute(x, additional_forward_args=scale, abs=False)
    torch.testing.assert_close(ours, Saliency(g).attribute(x, additional_forward_args=(scale, h), abs=False))
    torch.manual_seed(1), np.random.seed(1)  # Gradient Shap draws from both generators
    ours = LabelFreeForwardArgs(GradientShap(encoder)).attribute(
        x, additional_forward_args=(scale,), baselines=torch.zeros(2, 5), n_samples=4)
    torch.manual_seed(1), np.random.seed(1)
    theirs = GradientShap(g).attribute(x, additional_forward_args=(scale, h), baselines=torch.zeros(2, 5),
                                       n_samples=4)
    torch.testing.assert_close(ours, theirs)
    with pytest.raises(ValueError, match="target"):
        LabelFreeForwardArgs(Saliency(encoder)).attribute(x, additional_forward_args=scale, target=0)


@pytest.mark.parametrize("wrapper", [LabelFreeAttribution, LabelFreeForwardArgs])
def test_layer_integrated_gradients_on_the_embedding(wrapper):
    torch.manual_seed(0)
    encoder = TextEncoder()
    tokens = torch.tensor([[3, 5, 7, 0, 0], [1, 2, 4, 6, 11], [9, 9, 0, 0, 0]])
    baselines = torch.where(tokens != 0, torch.full_like(tokens, 1), tokens)  # a [MASK]-like id 1 on real tokens
    ours = wrapper(LayerIntegratedGradients(encoder, encoder.embedding)).attribute(
        tokens, baselines=baselines, n_steps=20)
    h = encoder(tokens).detach()
    theirs = LayerIntegratedGradients(explicit(encoder), encoder.embedding).attribute(
        tokens, baselines=baselines, additional_forward_args=(h,), n_steps=20)
    assert ours.shape == (3, 5, 4)
    torch.testing.assert_close(ours, theirs)
    per_token = token_attributions(ours)
    assert per_token.shape == (3, 5)
    assert per_token[tokens == 0].abs().max() == 0  # padding gets nothing (masked out of the mean)
    # completeness: the token importances add up to g(x) - g(baseline)
    gap = (h * h).sum(1) - (encoder(baselines) * h).sum(1)
    torch.testing.assert_close(per_token.sum(1), gap.detach(), atol=2e-3, rtol=1e-2)


def test_node_representation_equals_captum_and_stays_in_the_receptive_field():
    torch.manual_seed(0)
    gcn, x, edge_index = GCN(), torch.randn(8, 4), path_graph(8)
    x_batch, nodes = node_inputs(x, [0, 5])
    assert x_batch.shape == (2, 8, 4) and nodes.tolist() == [0, 5]
    ours = LabelFreeForwardArgs(IntegratedGradients(NodeRepresentation(gcn, edge_index))).attribute(
        x_batch, additional_forward_args=(nodes,), baselines=0.0, n_steps=12)
    h = gcn(x, edge_index)[nodes].detach()

    def g(xb: Tensor, node_ids: Tensor, rep: Tensor) -> Tensor:
        return torch.stack([(gcn(xb[j], edge_index)[node_ids[j]] * rep[j]).sum() for j in range(len(xb))])

    theirs = IntegratedGradients(g).attribute(x_batch, additional_forward_args=(nodes, h), baselines=0.0,
                                              n_steps=12)
    torch.testing.assert_close(ours, theirs)
    # a two-layer GCN on a path: node 0 sees nodes 0..2, node 5 sees 3..7
    touched = ours.abs().sum(-1) > 0
    assert touched[0].nonzero().flatten().tolist() == [0, 1, 2]
    assert touched[1].nonzero().flatten().tolist() == [3, 4, 5, 6, 7]


def test_edge_representation_equals_captum():
    torch.manual_seed(0)
    gcn, x, edge_index = GCN(), torch.randn(6, 4), path_graph(6)
    weights, nodes = edge_inputs(edge_index, [1, 4], num_nodes=6)
    assert weights.shape == (2, edge_index.shape[1])
    ours = LabelFreeForwardArgs(IntegratedGradients(EdgeRepresentation(gcn, x, edge_index))).attribute(
        weights, additional_forward_args=(nodes,), baselines=0.0, n_steps=12)
    h = gcn(x, edge_index)[nodes].detach()

    def g(w: Tensor, node_ids: Tensor, rep: Tensor) -> Tensor:
        return torch.stack([(gcn(x, edge_index, w[j])[node_ids[j]] * rep[j]).sum() for j in range(len(w))])

    theirs = IntegratedGradients(g).attribute(weights, additional_forward_args=(nodes, h), baselines=0.0,
                                              n_steps=12)
    assert ours.shape == weights.shape
    torch.testing.assert_close(ours, theirs)


def test_graph_wrappers_check_their_inputs():
    gcn, x, edge_index = GCN(), torch.randn(5, 4), path_graph(5)
    with pytest.raises(ValueError, match=r"node ids must lie in \[0, 5\)"):
        node_inputs(x, [7])
    with pytest.raises(ValueError, match=r"\[b, N, F\]"):
        NodeRepresentation(gcn, edge_index)(x, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"edge weights \[b, 8\]"):
        EdgeRepresentation(gcn, x, edge_index)(torch.ones(1, 3), torch.tensor([0]))
    wrapper = NodeRepresentation(gcn, edge_index)
    assert "edge_index" in dict(wrapper.named_buffers())  # moves with .to(device)


# ---------------------------------------------------------------------------------------------------------------
# masking metrics
# ---------------------------------------------------------------------------------------------------------------


def test_token_mask_ranks_only_real_tokens():
    tokens = torch.tensor([[5, 6, 7, 8, 0, 0], [2, 3, 0, 0, 0, 0]])
    attributions = torch.tensor([[0.1, -0.9, 0.3, 0.2, 5.0, 5.0], [0.5, -0.6, 9.0, 9.0, 9.0, 9.0]])
    mask = top_token_mask(attributions, tokens, 0.5)
    assert mask.tolist() == [[False, True, True, False, False, False], [False, True, False, False, False, False]]
    assert top_token_mask(attributions.unsqueeze(-1).repeat(1, 1, 3), tokens, 0.5).equal(mask)  # [n, T, E]
    masked = mask_tokens(tokens, mask, baseline_id=103)
    assert masked.tolist() == [[5, 103, 103, 8, 0, 0], [2, 103, 0, 0, 0, 0]]
    assert not top_token_mask(attributions, tokens, 0.0).any()
    assert top_token_mask(attributions, tokens, 1.0).equal(tokens != 0)
    # special ids are never selected
    assert not top_token_mask(attributions, tokens, 1.0, ignore_ids=[0, 6])[0, 1]
    with pytest.raises(ValueError, match=r"fraction 0\.2 of 2 eligible token\(s\) rounds to 0 \(first: example 1\)"):
        top_token_mask(attributions, tokens, 0.2)
    with pytest.raises(ValueError, match="fraction must be in"):
        top_token_mask(attributions, tokens, 1.5)


def test_token_masking_shift_reuses_representation_shift():
    torch.manual_seed(0)
    encoder = TextEncoder()
    tokens = torch.tensor([[3, 5, 7, 0], [1, 2, 4, 6]])
    masked = mask_tokens(tokens, top_token_mask(torch.rand(2, 4), tokens, 0.5), baseline_id=0)
    shift = representation_shift(encoder, tokens, masked)
    assert shift.shape == (2,) and (shift > 0).all()


def test_node_feature_mask_within_candidates():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    edge_index = path_graph(4)
    hop = k_hop_nodes(edge_index, [0, 3], num_nodes=4, hops=1)
    assert hop.tolist() == [[True, True, False, False], [False, False, True, True]]
    candidates = hop[:, :, None] & (x != 0)  # the node's 1-hop rows, nonzero entries: 2 and 3 of them
    attributions = torch.arange(8.0).reshape(1, 4, 2).repeat(2, 1, 1)
    mask = top_node_feature_mask(attributions, 0.5, candidates)
    assert mask.sum((1, 2)).tolist() == [1, 2]  # round(0.5 * 2) = 1, round(0.5 * 3) = 2 (half to even)
    assert mask[0].nonzero().tolist() == [[1, 1]] and mask[1].nonzero().tolist() == [[2, 1], [3, 0]]
    assert (mask <= candidates).all()
    masked = mask_node_features(x, mask)
    assert masked.shape == (2, 4, 2) and masked[0, 1, 1] == 0 and masked[1, 3, 0] == 0
    assert masked.sum().item() == 2 * x.sum().item() - 3
    with pytest.raises(ValueError, match=r"fraction 0\.1 of 2 eligible node-feature entry\(s\)"):
        top_node_feature_mask(attributions, 0.1, candidates)
    assert top_node_feature_mask(attributions, 0.25).sum((1, 2)).tolist() == [2, 2]  # all 8 entries eligible


def test_edge_mask_and_removal():
    edge_index = path_graph(4)  # (0,1) (1,2) (2,3) then the reverses
    attributions = torch.tensor([[3.0, 1.0, 0.5, 0.2, 0.1, 0.0]])
    drop = top_edge_mask(attributions, 1 / 3)
    assert drop.tolist() == [[True, True, False, False, False, False]]
    kept = remove_edges(edge_index, drop[0])
    assert kept.t().tolist() == [[2, 3], [1, 0], [2, 1], [3, 2]]
    both = remove_edges(edge_index, drop[0], undirected=True)
    assert both.t().tolist() == [[2, 3], [3, 2]]
    candidates = torch.tensor([False, False, True, True, True, True])
    assert top_edge_mask(attributions, 0.5, candidates).nonzero()[:, 1].tolist() == [2, 3]
    with pytest.raises(ValueError, match=r"fraction 0\.01 of 6 eligible edge\(s\) rounds to 0"):
        top_edge_mask(attributions, 0.01)


def test_graph_representation_shift():
    torch.manual_seed(0)
    gcn, x, edge_index = GCN(), torch.randn(6, 4), path_graph(6)
    nodes = torch.tensor([0, 4])
    unchanged = graph_representation_shift(gcn, x, edge_index, nodes)
    assert unchanged.tolist() == [0.0, 0.0]
    masked_x = x.unsqueeze(0).repeat(2, 1, 1)
    masked_x[0, 0] = 0.0  # node 0's own features
    masked_x[1, 0] = 0.0  # outside node 4's 2-hop field
    shift = graph_representation_shift(gcn, x, edge_index, nodes, masked_x=masked_x)
    assert shift[0] > 0 and shift[1] == 0
    cut = [remove_edges(edge_index, (edge_index == 0).any(0), undirected=True), edge_index]
    shift = graph_representation_shift(gcn, x, edge_index, nodes, masked_edge_index=cut)
    assert shift[0] > 0 and shift[1] == 0
    with pytest.raises(ValueError, match="one entry per explained node"):
        graph_representation_shift(gcn, x, edge_index, nodes, masked_edge_index=cut[:1])

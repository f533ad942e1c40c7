"""The Cora VGAE on the tiny Planetoid fixture: the link split, shapes, the per-node loss and its gradients,
determinism, and the graph consistency protocol."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from labelfree.attribution.examples import Objective
from labelfree.attribution.features import RandomAttribution
from labelfree.attribution.inputs import EdgeRepresentation, LabelFreeForwardArgs, NodeRepresentation
from labelfree.data.graph import split_edges
from labelfree.data.splits import build_dataset
from labelfree.models.registry import build_model
from labelfree.models.vgae import VGAE, SparseFeatures, link_auc
from labelfree.metrics.structured import top_edge_mask, top_node_feature_mask
from labelfree.protocols.graph import computation_subgraph, eligible_counts, explainable, graph_consistency, top_masks
from labelfree.training import TrainConfig
from captum.attr import IntegratedGradients, Saliency
from tests.fixtures.cora import write_cora

N_FEATURES = 12
CONFIG = {"name": "cora", "val_edge_fraction": 0.1, "test_edge_fraction": 0.1, "baseline": 0.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cora")
    write_cora(root, n_nodes=40, n_features=N_FEATURES, n_classes=3, n_train=6, n_test=12, seed=0)
    return build_dataset(CONFIG, root, seed=3)


def trained(data, seed=0, epochs=6):
    torch.manual_seed(seed)
    model = VGAE(N_FEATURES, 8, 4)
    result = model.train_on(data, TrainConfig(epochs=epochs, lr=0.01, weight_decay=0.0, patience=3, checkpoint_every=2),
                            seed=seed)
    return model, result


def test_link_split_is_disjoint_seeded_and_negatives_are_non_edges(data):
    graph, edges = data.graph, data.edges
    key = lambda pairs: set((pairs[0] * 100 + pairs[1]).tolist())  # noqa: E731
    undirected = lambda pairs: key(torch.stack([pairs.min(0).values, pairs.max(0).values]))  # noqa: E731
    train = undirected(edges.train_edge_index)
    val, test = key(edges.val_pos), key(edges.test_pos)
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == undirected(graph.edge_index)
    assert len(val) == round(0.1 * len(undirected(graph.edge_index))) and len(edges.val_neg[0]) == len(val)
    assert not (key(edges.val_neg) | key(edges.test_neg)) & undirected(graph.edge_index)
    assert (edges.val_neg[0] != edges.val_neg[1]).all()
    # every directed training edge appears with its reverse; one fixed negative per directed training edge
    assert key(edges.train_edge_index) == key(edges.train_edge_index.flip(0))
    assert torch.equal(edges.node_negatives[0], edges.train_edge_index[0])
    assert (edges.node_negatives[0] != edges.node_negatives[1]).all()
    again = split_edges(graph.edge_index, graph.num_nodes, 0.1, 0.1, seed=3)
    assert torch.equal(again.val_pos, edges.val_pos) and torch.equal(again.node_negatives, edges.node_negatives)
    other = split_edges(graph.edge_index, graph.num_nodes, 0.1, 0.1, seed=4)
    assert not torch.equal(other.val_pos, edges.val_pos)
    with pytest.raises(ValueError, match="val_fraction"):
        split_edges(graph.edge_index, graph.num_nodes, 1.2, 0.1, seed=0)


def test_shapes_registry_and_edge_weight_zero_is_removal(data):
    model = build_model({"name": "vgae", "n_features": N_FEATURES, "hidden_dim": 8, "latent_dim": 4})
    with pytest.raises(RuntimeError, match="bind_graph"):
        model.encoder(torch.arange(3))
    model.bind_data(data)
    assert model.encoder(torch.tensor([0, 5, 7])).shape == (3, 4)
    assert model.state_dict().keys() == {k for k, _ in model.named_parameters()}  # the graph is not saved
    x, edge_index = model.encoder.x, model.encoder.edge_index
    weight = torch.ones(edge_index.shape[1])
    weight[:3] = 0
    with torch.no_grad():
        assert torch.allclose(model.gcn(x, edge_index, weight), model.gcn(x, edge_index[:, 3:]), atol=1e-6)
    with pytest.raises(ValueError, match="positive integer"):
        VGAE(0, 8, 4)


def test_shared_normalisation_equals_plain_gcnconv_layers():
    from torch_geometric.nn import GCNConv

    torch.manual_seed(0)
    gcn = VGAE(N_FEATURES, 8, 4).gcn
    plain = [GCNConv(N_FEATURES, 8), GCNConv(8, 4), GCNConv(8, 4)]
    for layer, ours in zip(plain, (gcn.conv, gcn.conv_mu, gcn.conv_logvar)):
        layer.load_state_dict(ours.state_dict())
    x, edge_index = torch.rand(30, N_FEATURES), torch.randint(0, 30, (2, 80))
    edge_index = edge_index[:, edge_index[0] != edge_index[1]]
    weight = torch.rand(edge_index.shape[1])
    hidden = plain[0](x, edge_index, weight).relu()
    mu, logvar = gcn.posterior(x, edge_index, weight)
    assert torch.allclose(mu, plain[1](hidden, edge_index, weight), atol=1e-6)
    assert torch.allclose(logvar, plain[2](hidden, edge_index, weight), atol=1e-6)
    x[x < 0.7] = 0  # sparse features: the first layer from the non-zeros equals the dense product
    dense = gcn.posterior(x, edge_index, weight)
    for a, b in zip(gcn.posterior(SparseFeatures(x), edge_index, weight), dense):
        assert torch.allclose(a, b, atol=1e-6)


def test_per_node_loss_averages_to_the_edge_level_vgae_loss(data):
    model, _ = trained(data)
    nodes = torch.arange(data.graph.num_nodes)
    with torch.no_grad():
        per_node = model.pretext_loss(nodes)
        mu, logvar = model.encoder.posterior()
        pos, neg = data.edges.train_edge_index, data.edges.node_negatives
        recon = F.softplus(-(mu[pos[0]] * mu[pos[1]]).sum(-1)).mean() + F.softplus((mu[neg[0]] * mu[neg[1]]).sum(-1)).mean()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1).mean() / len(mu)
    assert per_node.shape == (len(nodes),) and torch.isfinite(per_node).all()
    assert torch.allclose(per_node.mean(), recon + kl, rtol=1e-5)
    assert torch.equal(model.pretext_loss(nodes), model.pretext_loss(nodes))  # deterministic without perturbation


def test_training_is_deterministic_and_learns_links(data, tmp_path):
    first, result = trained(data, seed=1, epochs=8)
    second, again = trained(data, seed=1, epochs=8)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    assert result.history == again.history and len(result.history) >= 1
    assert all(torch.isfinite(torch.tensor([h["train_loss"], h["val_loss"]])).all() for h in result.history)
    auc = link_auc(first.link_scores(data.edges.val_pos), first.link_scores(data.edges.val_neg))
    assert 0.0 <= auc <= 1.0
    assert link_auc(torch.tensor([0.9, 0.8]), torch.tensor([0.1, 0.8])) == 0.875


def test_per_node_gradients_match_an_explicit_loop(data):
    model, _ = trained(data)
    objective = Objective(model)
    nodes = torch.tensor([0, 3, 17, 29, 39])
    grads = objective.per_example_grads(nodes, chunk_size=2)
    params = [p for _, p in objective._named_parameters().items()]
    for row, node in zip(grads, nodes):
        model.zero_grad()
        model.pretext_loss(node[None])[0].backward()
        expected = torch.cat([p.grad.reshape(-1) for p in params])
        assert torch.allclose(row, expected, atol=1e-6, rtol=1e-5)
    assert grads.abs().sum() > 0


def test_the_computation_subgraph_gives_the_same_representation(data):
    model, _ = trained(data)
    gcn, x, edge_index = model.gcn, model.encoder.x, model.encoder.edge_index
    with torch.no_grad():
        full = gcn(x, edge_index)
        for node in data.test_x.tolist():
            sub = computation_subgraph(edge_index, len(x), node, gcn.n_layers)
            assert torch.allclose(gcn(x[sub.nodes], sub.edge_index)[sub.center], full[node], atol=1e-6)
            counts = eligible_counts(x, edge_index, torch.tensor([node]), gcn.n_layers)[0]
            assert int((sub.features[:, None] & (x[sub.nodes] != 0)).sum()) == int(counts[0])
            assert int(sub.edges.sum()) == int(counts[1])


def test_top_masks_select_as_the_structured_masks_do():
    torch.manual_seed(0)
    scores = torch.randn(1, 7, 5).round(decimals=1)  # ties
    eligible = torch.rand(1, 7, 5) < 0.6
    fractions = [0.05, 0.2, 0.5, 1.0]
    for fraction, mask in zip(fractions, top_masks(scores[0], eligible[0], fractions, "entries")):
        if round(fraction * int(eligible.sum())) == 0:
            continue
        assert torch.equal(mask, top_node_feature_mask(scores, fraction, eligible)[0])
    edges = torch.randn(1, 30)
    for fraction, mask in zip([0.1, 0.5], top_masks(edges[0], torch.ones(30, dtype=torch.bool), [0.1, 0.5], "edges")):
        assert torch.equal(mask, top_edge_mask(edges, fraction)[0])
    with pytest.raises(ValueError, match="selects nothing"):
        top_masks(edges[0], torch.zeros(30, dtype=torch.bool).index_fill(0, torch.tensor([0]), True), [0.1], "edges")


def test_graph_consistency_on_the_fixture(data):
    model, _ = trained(data)
    gcn, x, edge_index = model.gcn, model.encoder.x, model.encoder.edge_index
    percents = [20, 50, 100]
    ok = explainable(x, edge_index, data.test_x, gcn.n_layers, percents)
    counts = eligible_counts(x, edge_index, data.test_x, gcn.n_layers)
    assert torch.equal(ok, (torch.round(0.2 * counts.double()) >= 1).all(1))
    nodes = data.test_x[ok][:3]
    explainers = {
        "node_features": {"integrated_gradients": lambda f: LabelFreeForwardArgs(IntegratedGradients(f)),
                          "random_features": lambda f: RandomAttribution(f, seed=0)},
        "edges": {"saliency": lambda f: LabelFreeForwardArgs(Saliency(f)),
                  "random_features": lambda f: RandomAttribution(f, seed=0)},
    }
    frame, first = graph_consistency(gcn, x, edge_index, nodes, explainers, {"integrated_gradients": {"n_steps": 4}},
                                     percents, gcn.n_layers)
    assert {"method", "level", "metric", "value", "std", "n", "target"} <= set(frame.columns)
    assert len(frame) == 2 * 2 * len(percents) and (frame["n"] == len(nodes)).all()
    for target in ("node_features", "edges"):
        full = frame[(frame["target"] == target) & (frame["level"] == 100)]["value"]
        assert full.max() - full.min() <= 1e-6 * max(1.0, full.abs().max())  # everything eligible masked
    assert first["node_features/integrated_gradients"].shape == x.shape
    assert first["edges/saliency"].shape == (edge_index.shape[1],)
    # the subgraph attributions equal those on the whole graph (NodeRepresentation / EdgeRepresentation of all of it)
    node = int(nodes[0])
    whole = LabelFreeForwardArgs(Saliency(NodeRepresentation(gcn, edge_index))).attribute(
        x[None], additional_forward_args=(torch.tensor([node]),))[0]
    _, saliency = graph_consistency(gcn, x, edge_index, nodes[:1], {"node_features": {
        "saliency": lambda f: LabelFreeForwardArgs(Saliency(f))}}, {}, [100], gcn.n_layers)
    assert torch.allclose(saliency["node_features/saliency"], whole, atol=1e-6)
    edges = LabelFreeForwardArgs(Saliency(EdgeRepresentation(gcn, x, edge_index))).attribute(
        torch.ones(1, edge_index.shape[1]), additional_forward_args=(torch.tensor([node]),))[0]
    assert torch.allclose(first["edges/saliency"], edges, atol=1e-6)
    with pytest.raises(ValueError, match="keyed by target"):
        graph_consistency(gcn, x, edge_index, nodes, {"tokens": {}}, {}, percents, gcn.n_layers)

"""Study: consistency of label-free feature and example importance on a graph (Cora, a variational graph
autoencoder; ``protocol=graph``). See docs/cora.md.

* Features (per explained node, against Random): node features set to 0 and edges removed, the top p % of the
  node's eligible elements by each explainer (:mod:`labelfree.protocols.graph`).
* Examples: the node ids are the examples; similarity rates by the node's class (labels used only for scoring),
  with the explainers of ``protocol.examples.explainers`` (the per-node loss of :mod:`labelfree.models.vgae`).
"""

from __future__ import annotations

import time
from functools import partial
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from experiments.aggregation import aggregate_levels, redraw_levels
from experiments.claims import Claim, figure_link, read_table
from experiments.explainers import build_example_explainers, explainer_settings
from experiments.studies.consistency import example_check, example_consistency, feature_consistency
from experiments.study import Study, StudyResult, identify
from experiments.workbench import Workbench
from labelfree.attribution.features import CAPTUM_METHODS, RandomAttribution
from labelfree.attribution.inputs import LabelFreeForwardArgs
from labelfree.data.subsets import random_subset
from labelfree.models.vgae import link_auc
from labelfree.plots import dataset_label, plot_representation_shift, plot_similarity_rates
from labelfree.plots_graph import plot_edge_shift, plot_node_neighbourhood
from labelfree.protocols.graph import TARGETS, explainable, graph_consistency

NODE_FEATURES, EDGES, EXAMPLES = "graph_node_features", "graph_edges", "graph_examples"
NEIGHBOURHOOD = "graph_neighbourhood"
TABLES = {"node_features": NODE_FEATURES, "edges": EDGES}


def _check(cfg: DictConfig) -> None:
    """Settings the schema cannot express (a list of names, a numeric baseline), before anything is loaded."""
    protocol, baseline = cfg.protocol, cfg.dataset.baseline
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float)):
        raise ValueError(f"dataset.baseline={baseline!r} is not accepted for a graph: expected a number (0: a word absent)")
    targets = list(protocol.features.targets)
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or not targets:
        raise ValueError(f"protocol.features.targets={targets} is not accepted: expected a non-empty list of {list(TARGETS)}")
    if protocol.figure.method not in protocol.features.explainers:
        raise ValueError(f"protocol.figure.method={protocol.figure.method!r} is not accepted: expected one of "
                         f"protocol.features.explainers {list(protocol.features.explainers)}")


def _feature_explainers(cfg: DictConfig) -> tuple[dict, dict]:
    """Per target, name -> factory of the label-free explainer on a node's forward module; name -> attribute kwargs."""
    factories: dict[str, Any] = {}
    kwargs: dict[str, dict[str, Any]] = {}
    for name in cfg.protocol.features.explainers:
        settings = explainer_settings(cfg, name, "feature")
        method = settings["method"]
        if method != "random" and method not in CAPTUM_METHODS:
            raise ValueError(f"explainers.{name}.method={method!r} cannot explain a graph; accepted: "
                             f"{sorted([*CAPTUM_METHODS, 'random'])}")
        kwargs[name] = dict(settings.get("attribute") or {})
        factories[name] = (partial(RandomAttribution, seed=int(cfg.seed)) if method == "random"
                           else partial(_label_free, CAPTUM_METHODS[method]))
    return {target: dict(factories) for target in cfg.protocol.features.targets}, kwargs


def _label_free(method: type, forward: Any) -> LabelFreeForwardArgs:
    return LabelFreeForwardArgs(method(forward))


def run(cfg: DictConfig, bench: Workbench) -> StudyResult:
    """Train (or load) the VGAE, then each enabled check."""
    protocol, seed, result = cfg.protocol, int(cfg.seed), StudyResult()
    _check(cfg)
    trained = bench.get("features")
    bench.reseed()
    data, model = trained.data, trained.model
    gcn, graph = model.gcn, data.graph
    x, edge_index = model.encoder.x, model.encoder.edge_index
    result.summary["link_auc_test"] = link_auc(model.link_scores(data.edges.test_pos), model.link_scores(data.edges.test_neg))
    result.summary["link_auc_val"] = link_auc(model.link_scores(data.edges.val_pos), model.link_scores(data.edges.val_neg))
    label = dataset_label(data.name)
    if protocol.features.enabled:
        start = time.perf_counter()
        percents = list(protocol.features.percents)
        candidates = data.test_x[explainable(x, edge_index, data.test_x, gcn.n_layers, percents, float(data.baseline))]
        nodes = candidates[random_subset(len(candidates), protocol.features.n_nodes, seed)]
        explainers, kwargs = _feature_explainers(cfg)
        frame, first = graph_consistency(gcn, x, edge_index, nodes, explainers, kwargs, percents, gcn.n_layers,
                                         float(data.baseline))
        for target in explainers:
            part = identify(cfg, data, frame[frame["target"] == target].reset_index(drop=True))
            what = "node features" if target == "node_features" else "edges"
            plot = plot_representation_shift if target == "node_features" else plot_edge_shift
            result.tables[TABLES[target]] = part
            result.figures[TABLES[target]] = plot(part, f"{label}: consistency of feature importance, {what} (seed {seed})")
        method, node = str(protocol.figure.method), int(nodes[0])
        node_scores = first.get(f"node_features/{method}")
        edge_scores = first.get(f"edges/{method}")
        if node_scores is not None and edge_scores is not None:
            result.figures[NEIGHBOURHOOD] = plot_node_neighbourhood(
                edge_index, node, node_scores.abs().sum(1), edge_scores, gcn.n_layers, labels=graph.y,
                title=f"{label}: node {node} (class {int(graph.y[node])}), {method}; labels = classes")
        result.summary["explained_nodes"] = len(nodes)
        result.summary["explainable_test_nodes"] = len(candidates)
        result.summary["features_seconds"] = time.perf_counter() - start
    if protocol.examples.enabled:
        start = time.perf_counter()
        train_idx = random_subset(len(data.train_x), protocol.examples.n_train, seed)
        test_idx = random_subset(len(data.test_x), protocol.examples.n_test, seed)
        explainers = build_example_explainers(cfg, list(protocol.examples.explainers), model, trained.checkpoints)
        example_check(cfg, trained, explainers, train_idx, test_idx, result, start,
                      f"{label}: consistency of example importance (seed {seed})", table=EXAMPLES)
    return result


PLOTS = {NODE_FEATURES: plot_representation_shift, EDGES: plot_edge_shift, EXAMPLES: plot_similarity_rates}


def aggregate(runs: Sequence[Path], results: Path, scale: str) -> list[Path]:
    """Per experiment: every run's rows, the mean +/- std table across seeds and the figure, per table."""
    return aggregate_levels(runs, results, scale, "graph", PLOTS)


def redraw(results: Path, scale: str) -> list[Path]:
    """The tables and figures drawn again from the kept ``*_runs.csv``."""
    return redraw_levels(results, scale, PLOTS)


def claims(results: Path, scale: str, rules: Mapping[str, Any]) -> list[Claim]:
    """Feature consistency on node features and on edges, and example consistency, with the consistency study's
    checks (:func:`~experiments.studies.consistency.feature_consistency`, ``example_consistency``)."""
    folder = results / str(rules["experiment"]) / scale
    name = str(rules["dataset"])
    checks = (
        (NODE_FEATURES, feature_consistency, {"features": rules["features"], "datasets": {"x": f"{name} node features"}}),
        (EDGES, feature_consistency, {"features": rules["features"], "datasets": {"x": f"{name} edges"}}),
        (EXAMPLES, example_consistency, {"examples": {**rules["examples"], "methods": {"x": rules["examples"]["methods"]}},
                                         "datasets": {"x": f"{name} nodes"}}),
    )
    out = []
    for table, check, node in checks:
        claim = check(read_table(folder / f"{table}_runs.csv"), "x", {"confidence": rules["confidence"], **node})
        claim.figure = figure_link(folder / f"{table}.png", results)
        out.append(claim)
    return out


STUDY = Study("graph", "Consistency of label-free feature and example importance on a graph (Cora)",
              (NODE_FEATURES, EDGES, EXAMPLES), run, aggregate, claims, figures=(NEIGHBOURHOOD,), redraw=redraw)

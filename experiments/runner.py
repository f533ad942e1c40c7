"""The runner: build objects from a composed config, train or load the model, run the study the config
names, and write its results, figures, the resolved config and a summary into the run directory.

Hydra is only used by ``run.py``; :func:`run` takes a plain ``DictConfig`` (tests use Hydra's compose API)
and a run directory.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import warnings
import platform
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from experiments.config import container, same_config
from experiments.schema import check_config
from experiments.studies import study_for
from experiments.tracking import make_tracker
from experiments.workbench import Workbench
from labelfree.guards import check_finite
from labelfree.io import save_csv, save_json, save_text
from labelfree.plots import save_figure
from labelfree.runtime import peak_rss_gib
from labelfree.training import resolve_device

log = logging.getLogger(__name__)

HISTORY = "training_history.csv"  # every model's per-epoch losses (also in the model cache's train.json)
#: third-party warnings that tell a user of the runner nothing: Captum enables input gradients itself
QUIET_WARNINGS = (r"Input Tensor \d+ did not already require gradients",)


def quiet(progress: bool) -> None:
    """Progress bars on or off (``progress`` in the config; off suits logs that are not a terminal), and the
    third-party warnings of :data:`QUIET_WARNINGS` filtered.

    tqdm reads its ``TQDM_DISABLE`` override when it is imported, before any config is composed, so the switch
    sets the default of ``disable`` on tqdm's class itself (every bar of the library is a ``tqdm.auto.tqdm``).
    """
    init = _TQDM_INIT.setdefault("init", tqdm.__init__)
    tqdm.__init__ = init if progress else functools.partialmethod(init, disable=True)
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


_TQDM_INIT: dict[str, Any] = {}


def _finished_summary(run_dir: Path, resolved_config: str) -> dict[str, Any] | None:
    """The summary of a run that already finished in ``run_dir`` with this config (equal up to
    :data:`~experiments.config.LATER_DEFAULTS`), else None."""
    summary, config = run_dir / "summary.json", run_dir / "config.yaml"
    if not (summary.exists() and config.exists()) or not same_config(config.read_text(), resolved_config):
        return None
    try:
        return json.loads(summary.read_text())
    except json.JSONDecodeError:
        return None


@contextlib.contextmanager
def flush_denormals(enabled: bool) -> Iterator[None]:
    """Flush denormal floats to zero on CPU while a run lasts (``protocol.flush_denormal``).

    Trained VAEs produce denormals that make CPU convolutions (their backward pass above all) 2-3x slower;
    flushing changes only values below 1.2e-38. The flag is per thread, and a thread inherits it from the thread
    that creates it: torch's intra-op pool inherits it only when it is set before the pool's first use, so it is
    set here, before any torch work of the process. In a multirun the pool made by the first run keeps it.
    """
    if not enabled or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Run one experiment described by ``cfg`` into ``run_dir``; return the summary (also ``summary.json``)."""
    with flush_denormals(bool(cfg.protocol.get("flush_denormal", False))):
        return _run(cfg, run_dir)


def _run(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    start = time.perf_counter()
    study = study_for(cfg.protocol.name)
    quiet(bool(cfg.get("progress", True)))
    check_config(cfg)  # types, ranges and every explainer, before any data is loaded or model trained
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    finished = _finished_summary(run_dir, resolved)
    if finished is not None and cfg.get("skip_finished", False):
        log.info("already finished with the same config, skipped: %s", run_dir)
        return finished
    # a rerun is unfinished until it writes a new summary, and none of an earlier run's outputs survive it
    for name in ("summary.json", HISTORY, *study.outputs()):
        (run_dir / name).unlink(missing_ok=True)
    save_text(resolved, run_dir / "config.yaml")
    bench = Workbench(cfg)
    bench.reseed()
    name = f"{cfg.get('experiment') or 'adhoc'}-{cfg.scale.name}-seed{cfg.seed}"
    tracker = make_tracker(container(cfg.logger), container(cfg), run_dir, name)
    try:
        summary: dict[str, Any] = {
            "experiment": cfg.get("experiment"),
            "study": study.name,
            "scale": cfg.scale.name,
            "seed": int(cfg.seed),
            "device": resolve_device(cfg.device).type,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        }
        result = study.run(cfg, bench)
        for table, frame in result.tables.items():
            # inf never reaches a table; NaN only where the protocol documents it (checked there)
            save_csv(check_finite(f"{table}.csv", frame, allow_nan=True), run_dir / f"{table}.csv")
            tracker.log_table(table, frame)
        for stem, figure in result.figures.items():
            tracker.log_figure(stem, save_figure(figure, run_dir / stem)[0])
        summary.update(result.summary)
        history = bench.training_history()
        if not history.empty:
            save_csv(history, run_dir / HISTORY)
            tracker.log_history(history)
        summary["training"] = bench.training_summary()
        summary["model_cached"] = all(t["model_cached"] for t in summary["training"].values())
        # wall_seconds then leaves out the epochs trained before the interruption
        summary["training_resumed"] = any(t.get("resumed_from_epoch", 0) > 0 for t in summary["training"].values())
        summary["wall_seconds"] = time.perf_counter() - start
        summary["peak_rss_gib"] = peak_rss_gib()
        summary["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        save_json(summary, run_dir / "summary.json")
        tracker.log_summary(summary)
    finally:
        tracker.finish()
    log.info("run finished in %.1f s: %s", summary["wall_seconds"], run_dir)
    return summary

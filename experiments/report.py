"""Write the claim report: one row per claim of the paper, what it claims, what was measured, whether it holds.

    python -m experiments.report --results results --scale quick

Every registered study (:data:`experiments.studies.STUDIES`) checks its own claims on the tables its own
aggregation wrote (``python -m experiments.aggregate``), with the rules of ``configs/claims.yaml``; a claim
whose results are missing is listed as "not run". One report per scale: ``<results>/REPORT-<scale>.md``.

Every row says the scale it rests on. A claim not run at a scale that has a fallback (``report.fallback`` in
``configs/claims.yaml``: paper -> quick) shows the fallback scale's evidence and verdict beside "not run", and a
claim on a data set listed in ``report.needs_gpu`` reads "needs GPU, quick-scale evidence only" there: its
paper-scale runs take days on a CPU (README, time table). A row run on fewer seeds than the Makefile plans at
that scale (``report.planned_seeds``) is "incomplete": a sweep spread over several sessions is not yet a verdict.
A scale with a fallback also gets a section setting each of its verdicts beside the fallback scale's, for every
claim run at both (:func:`scale_comparison`).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from experiments.aggregation import to_markdown
from experiments.claims import INCOMPLETE, NOT_RUN, VERDICTS, Claim
from experiments.config import SCALES, container
from experiments.studies import STUDIES
from labelfree.io import save_text

log = logging.getLogger("experiments.report")

RULES = Path(__file__).resolve().parents[1] / "configs" / "claims.yaml"


def report_rules(path: Path = RULES) -> dict:
    """The report's own rules: ``fallback`` (scale -> scale whose evidence stands in), ``needs_gpu`` and
    ``method_notes`` (method -> what a reader must know about the rows that measured it), ``claim_notes``
    (scale -> claim -> why something the claim names is missing there) and ``planned_seeds`` (scale -> claim ->
    ``{make, seeds}``: the Makefile variable of its default seeds at that scale and those seeds)."""
    node = container(OmegaConf.load(path)).get("report") or {}
    fallback = node.get("fallback", {})
    unknown = sorted((set(fallback) | set(fallback.values())) - set(SCALES))
    if unknown:
        raise ValueError(f"{path}: report.fallback names unknown scales {unknown}; accepted: {list(SCALES)}")
    return {"fallback": dict(fallback), "needs_gpu": list(node.get("needs_gpu", [])),
            "method_notes": {str(k): str(v) for k, v in (node.get("method_notes") or {}).items()},
            "claim_notes": {str(scale): {str(k): str(v) for k, v in (notes or {}).items()}
                            for scale, notes in (node.get("claim_notes") or {}).items()},
            "planned_seeds": {str(scale): {str(k): {"make": str(v["make"]), "seeds": [int(s) for s in v["seeds"]]}
                                           for k, v in (plans or {}).items()}
                              for scale, plans in (node.get("planned_seeds") or {}).items()}}


def _noted(claim: Claim, *notes: str) -> Claim:
    """``claim`` with ``notes`` appended to its note (``"; "``-separated)."""
    return replace(claim, note="; ".join(n for n in (claim.note, *notes) if n))


def with_claim_notes(claims: Sequence[Claim], notes: dict[str, str], scale: str) -> list[Claim]:
    """``claims`` with ``notes[claim name]`` added to the note of each named claim run at ``scale`` (not to a row
    that shows another scale's evidence). A note naming no claim is an error (a renamed claim, a typo)."""
    unknown = sorted(set(notes) - {c.claim for c in claims})
    if unknown:
        raise ValueError(f"report.claim_notes.{scale} names claims that do not exist: {unknown}")
    return [_noted(c, notes[c.claim]) if c.claim in notes and c.verdict != NOT_RUN and c.scale in ("", scale) else c
            for c in claims]


def with_planned_seeds(claims: Sequence[Claim], plans: dict[str, dict], scale: str) -> list[Claim]:
    """``claims`` with every row run at ``scale`` on fewer than its planned seeds (``plans[claim]["seeds"]``)
    made "incomplete": a partial sweep is not a verdict at that scale. Its note names the seeds not run yet and
    the verdict on the seeds measured. Rows showing another scale's evidence are left as they are; a plan naming
    no claim is an error (a renamed claim, a typo)."""
    unknown = sorted(set(plans) - {c.claim for c in claims})
    if unknown:
        raise ValueError(f"report.planned_seeds.{scale} names claims that do not exist: {unknown}")
    out = []
    for claim in claims:
        planned = plans.get(claim.claim, {}).get("seeds", [])
        not_run = sorted(set(planned) - set(claim.seeds))
        if claim.verdict == NOT_RUN or claim.scale not in ("", scale) or not not_run:
            out.append(claim)
            continue
        note = (f"partial sweep: seeds {', '.join(map(str, not_run))} of the planned "
                f"{', '.join(map(str, planned))} not run yet (`make` variable {plans[claim.claim]['make']})"
                + (f"; on the {len(claim.seeds)} measured: {claim.verdict}" if claim.verdict != INCOMPLETE else ""))
        out.append(_noted(replace(claim, verdict=INCOMPLETE), note))
    return out


def with_method_notes(claims: Sequence[Claim], notes: dict[str, str]) -> list[Claim]:
    """``claims`` with the note of each method in ``notes`` added to every row whose measured text names it
    (as a whole word: ``influence_functions`` does not match ``influence_functions_arnoldi``)."""
    def named(method: str, text: str) -> bool:
        return re.search(rf"(?<!\w){re.escape(method)}(?!\w)", text) is not None

    return [_noted(c, *(note for method, note in notes.items() if named(method, c.measured))) for c in claims]


def with_fallback(claims: Sequence[Claim], scale: str, fallback: Sequence[Claim], fallback_scale: str,
                  needs_gpu: Sequence[str]) -> list[Claim]:
    """``claims`` of ``scale`` with every "not run" row replaced by the same claim's evidence at
    ``fallback_scale`` (matched by name), its status saying so; rows that were run keep ``scale``."""
    by_name = {c.claim: c for c in fallback}
    out = []
    for claim in claims:
        other = by_name.get(claim.claim)
        gpu = any(name in claim.claim for name in needs_gpu)
        if claim.verdict != NOT_RUN or other is None or other.verdict == NOT_RUN:
            out.append(replace(claim, scale=scale if claim.verdict != NOT_RUN else "-",
                               status="needs GPU, no evidence yet" if gpu and claim.verdict == NOT_RUN else ""))
            continue
        status = (f"needs GPU, {fallback_scale}-scale evidence only" if gpu
                  else f"not run at {scale} scale yet; {fallback_scale} scale") + f": {other.verdict}"
        out.append(replace(other, scale=fallback_scale, status=status))
    return out


def scale_comparison(claims: Sequence[Claim], scale: str, other: Sequence[Claim], other_scale: str) -> pd.DataFrame:
    """Per claim run at both scales (``claims`` at ``scale``, after :func:`with_fallback`; ``other`` at
    ``other_scale``, matched by name): both verdicts, their seeds, and whether they differ."""
    by_name = {c.claim: c for c in other}
    rows = []
    for claim in claims:
        theirs = by_name.get(claim.claim)
        if claim.scale != scale or claim.verdict == NOT_RUN or theirs is None or theirs.verdict == NOT_RUN:
            continue
        rows.append({"claim": claim.claim, scale: f"{claim.verdict} ({claim.per_seed})",
                     other_scale: f"{theirs.verdict} ({theirs.per_seed})",
                     "differs": "**yes**" if claim.verdict != theirs.verdict else "no"})
    return pd.DataFrame(rows, columns=["claim", scale, other_scale, "differs"])


def load_rules(path: Path = RULES) -> dict:
    """The claim rules, one node per study (each with the shared ``confidence``)."""
    rules = container(OmegaConf.load(path))
    rules.pop("report", None)
    missing = sorted(set(STUDIES) - set(rules))
    if missing:
        raise ValueError(f"{path} has no rules for the studies {missing}")
    return {name: {"confidence": rules["confidence"], **rules[name]} for name in STUDIES}


def collect_claims(results: Path, scale: str, rules: dict | None = None) -> list[Claim]:
    """Every study's claims, checked on the aggregated tables under ``results``."""
    rules = load_rules() if rules is None else rules
    return [claim for name, study in STUDIES.items() for claim in study.claims(results, scale, rules[name])]


def report_path(results: Path, scale: str) -> Path:
    """One report per scale: ``<results>/REPORT-<scale>.md``."""
    return results / f"REPORT-{scale}.md"


def runs_read(results: Path, scale: str) -> pd.DataFrame:
    """Per experiment and table: the seeds and dates of the finished runs behind the aggregated tables, the
    seeds a multirun asked for but did not produce, and duplicate runs dropped (from ``*_runs.json``)."""
    rows = []
    for path in sorted(results.glob(f"*/{scale}/*runs.csv")):
        frame = pd.read_csv(path, usecols=lambda c: c in {"experiment", "seed", "finished_at"})
        record_path = path.with_suffix(".json")
        record = json.loads(record_path.read_text()) if record_path.exists() else {}
        for experiment, part in frame.groupby("experiment"):
            dates = part["finished_at"].dropna().astype(str) if "finished_at" in part else pd.Series(dtype=str)
            missing = record.get("missing_seeds", [])
            missing = missing.get(experiment, []) if isinstance(missing, dict) else missing
            rows.append({"experiment": experiment, "table": path.name,
                         "seeds": ", ".join(map(str, sorted(set(part["seed"])))),
                         "missing seeds": ", ".join(map(str, missing)) or "-",
                         "duplicates dropped": len(record.get("duplicates", [])),
                         "runs finished": f"{dates.min()[:10]} to {dates.max()[:10]}" if len(dates)
                         else "not recorded (aggregated by earlier code; its runs were not kept)"})
    return pd.DataFrame(rows, columns=["experiment", "table", "seeds", "missing seeds", "duplicates dropped",
                                       "runs finished"])


def render(claims: Sequence[Claim], scale: str, runs: pd.DataFrame | None = None,
           comparison: pd.DataFrame | None = None) -> str:
    """The Markdown report of one scale; ``comparison`` (:func:`scale_comparison`) adds a section setting its
    verdicts beside another scale's."""
    table = pd.DataFrame([{"claim": c.claim, "paper": c.paper, "measured": c.measured, "scale": c.scale or scale,
                           "seeds": len(c.seeds), "seeds satisfying": c.per_seed, "verdict": c.status or c.verdict,
                           "note": c.note} for c in claims])
    borrowed = [c for c in claims if c.scale and c.scale not in (scale, "-")]
    counts = {v: sum(c.verdict == v for c in claims if c not in borrowed) for v in VERDICTS}
    counts[NOT_RUN] += len(borrowed)
    runs = runs if runs is not None else pd.DataFrame()
    experiments = sorted(set(runs["experiment"])) if len(runs) else []
    lines = [
        f"# Reproduction report: {scale} scale",
        "",
        f"Generated by `python -m experiments.report --scale {scale}` from the aggregated results of the `{scale}` "
        "runs; the rules and thresholds are in `configs/claims.yaml` and their definitions in `experiments/claims.py`. "
        + ", ".join(f"{n} {v}" for v, n in counts.items() if n)
        + (f" ({len(borrowed)} of the claims not run here show another scale's evidence, marked in the scale "
           "column)" if borrowed else "") + ".",
        "",
        "Verdicts: *holds* when every inequality of the claim has its confidence interval above its margin "
        "(Student's t across seeds; with one seed, the spread over test examples); *does not hold* when one lies "
        "below; *inconclusive* when the spread is too large for the number of seeds; *incomplete* when a method, "
        "level or seed the claim names, or a seed the Makefile runs at this scale, was not measured (a partial "
        "sweep; its note gives the verdict on the seeds measured); *not run* when nothing was.",
        "",
        to_markdown(table),
    ]
    if comparison is not None and len(comparison):
        other = comparison.columns[2]
        differ = int((comparison["differs"] != "no").sum())
        lines += [
            f"## Against {other} scale",
            "",
            f"Every claim run at both scales, its verdict at each (seeds satisfying every inequality on their own, "
            f"out of the seeds measured): {differ} of {len(comparison)} differ.",
            "",
            to_markdown(comparison),
        ]
    lines += [
        "## Settings and runs read",
        "",
        "Settings of each experiment at this scale: " + (", ".join(
            f"`configs/preset/{e}/{scale}.yaml`" for e in experiments) or "none") + " (over `configs/experiment/<experiment>.yaml`).",
        "",
        to_markdown(runs) if len(runs) else "No runs were read.\n",
        "## Figures",
        "",
    ]
    for c in claims:
        if c.figure:
            lines += [f"### {c.claim}", "", f"![{c.claim}]({c.figure})", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="results")
    parser.add_argument("--scale", default="quick", choices=list(SCALES))
    parser.add_argument("--out", default=None, help="default: <results>/REPORT-<scale>.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = Path(args.results)
    claims = collect_claims(results, args.scale)
    extra = report_rules()
    other = extra["fallback"].get(args.scale)
    if other:
        other_claims = with_claim_notes(with_planned_seeds(
            collect_claims(results, other), extra["planned_seeds"].get(other, {}), other),
            extra["claim_notes"].get(other, {}), other)
        claims = with_fallback(claims, args.scale, other_claims, other, extra["needs_gpu"])
    claims = with_planned_seeds(claims, extra["planned_seeds"].get(args.scale, {}), args.scale)
    claims = with_method_notes(claims, extra["method_notes"])
    claims = with_claim_notes(claims, extra["claim_notes"].get(args.scale, {}), args.scale)
    comparison = scale_comparison(claims, args.scale, other_claims, other) if other else None
    out = Path(args.out) if args.out else report_path(results, args.scale)
    save_text(render(claims, args.scale, runs_read(results, args.scale), comparison), out)
    for c in claims:
        log.info("%-40s %-14s %s seeds", c.claim, c.verdict, c.per_seed)


if __name__ == "__main__":
    main()

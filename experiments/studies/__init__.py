"""The registered studies: ``protocol.name`` -> :class:`~experiments.study.Study`.

A new study is one module here defining ``STUDY`` plus its configs (``configs/protocol``,
``configs/experiment``, ``configs/preset/<experiment>/<scale>.yaml``) and its claim rules
(``configs/claims.yaml``); list it in :data:`STUDIES`.
"""

from __future__ import annotations

from experiments.studies import consistency, disvae, disvae_prior, graph, pretext, roar, text
from experiments.study import Study

STUDIES: dict[str, Study] = {s.name: s for s in (consistency.STUDY, roar.STUDY, pretext.STUDY, disvae.STUDY,
                                                   disvae_prior.STUDY, text.STUDY, graph.STUDY)}


def study_for(name: str) -> Study:
    """The study that runs ``protocol.name == name``."""
    if name not in STUDIES:
        raise ValueError(f"Unknown protocol {name!r}; accepted: {sorted(STUDIES)}")
    return STUDIES[name]

"""Protocol: consistency of label-free feature importance over the tokens of texts (the paper's feature check on
a text encoder).

For each test text, the top p % of its eligible tokens by |token importance| are replaced by a baseline token
(``[MASK]`` or ``[PAD]``) and the representation shift ``||f(x) - f(x_masked)||^2`` is measured; a faithful
explainer shifts the representation more than a random ranking. Eligible tokens are those whose id is not in
``ignore_ids`` (padding, and the ``[EOS]`` every text ends with); a text with too few eligible tokens for the
smallest p to select one (``round(p / 100 * n_tokens) = 0``) is left out, and the rows' ``n`` says how many
texts were measured.

Returns tidy rows ``method, level, metric, value, std, n`` like :mod:`labelfree.protocols.consistency`
(level = p in percent, metric = ``representation_shift``; std over test texts). The example check on texts is
:func:`labelfree.protocols.consistency.consistency_examples` as it is (token ids in, similarity rates out).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from labelfree.attribution.tokens import TokenAttribution
from labelfree.guards import check_finite
from labelfree.metrics import percent_to_fraction, representation_shift
from labelfree.metrics.structured import mask_tokens, top_token_mask
from labelfree.modules import module_device
from labelfree.protocols.consistency import tidy_row

log = logging.getLogger(__name__)

__all__ = ["METRIC_SHIFT", "eligible_texts", "token_consistency"]

METRIC_SHIFT = "representation_shift"


def eligible_texts(ids: Tensor, percents: Sequence[float], ignore_ids: Sequence[int]) -> Tensor:
    """Boolean ``[n]``: the texts in which every p of ``percents`` (> 0) selects at least one eligible token."""
    counts = (~torch.isin(ids, torch.as_tensor(list(ignore_ids), dtype=ids.dtype))).sum(dim=1).double()
    ok = torch.ones(len(ids), dtype=torch.bool)
    for p in percents:
        fraction = percent_to_fraction(p)
        if fraction > 0:
            ok &= torch.round(fraction * counts) >= 1
    return ok


def token_consistency(
    encoder: nn.Module,
    test_ids: Tensor,
    explainers: Mapping[str, TokenAttribution],
    attribute_kwargs: Mapping[str, Mapping[str, Any]],
    percents: Sequence[float],
    baseline_id: int,
    ignore_ids: Sequence[int],
    batch_size: int = 256,
) -> pd.DataFrame:
    """Representation shift per (method, p) over the tokens of ``test_ids [n, T]`` (module docstring).

    Args:
        encoder: token ids ``[b, T]`` -> ``[b, ...]`` (explained and measured in eval mode).
        test_ids: the test texts' token ids, int64.
        explainers: name -> :class:`~labelfree.attribution.tokens.TokenAttribution`.
        attribute_kwargs: name -> keyword arguments of its ``attribute`` (``n_steps``, ``n_samples``, ...).
        percents: p, in (0, 100].
        baseline_id: the token that replaces masked tokens (and the attributions' baseline text).
        ignore_ids: token ids never masked nor ranked.
        batch_size: texts attributed at once.
    """
    if not explainers:
        raise ValueError("token_consistency needs at least one token explainer")
    if test_ids.dim() != 2 or test_ids.dtype != torch.int64:
        raise ValueError(f"test_ids must be token ids int64 [n, T], got {test_ids.dtype} {tuple(test_ids.shape)}")
    keep = eligible_texts(test_ids, percents, ignore_ids)
    if not bool(keep.any()):
        raise ValueError(f"no test text has enough eligible tokens for p = {min(percents):g} % to mask one")
    if not bool(keep.all()):
        log.warning("token consistency: %d of %d texts are too short for p = %g %% and are left out",
                    int((~keep).sum()), len(keep), min(percents))
    ids_all = test_ids[keep]
    device = module_device(encoder)
    fractions = [percent_to_fraction(p) for p in percents]
    shifts: dict[tuple[str, float], list[Tensor]] = {}
    encoder.eval()
    for name, explainer in explainers.items():
        kwargs = dict(attribute_kwargs.get(name, {}))
        for idx in tqdm(torch.arange(len(ids_all)).split(int(batch_size)), desc=f"tokens {name}", leave=False):
            ids = ids_all[idx].to(device)
            scores = explainer.attribute(ids, baseline_id, **kwargs)
            for p, fraction in zip(percents, fractions):
                mask = top_token_mask(scores, ids, fraction, ignore_ids=list(ignore_ids))
                shift = representation_shift(encoder, ids, mask_tokens(ids, mask, baseline_id))
                shifts.setdefault((name, float(p)), []).append(shift.cpu())
        log.info("tokens %s done", name)
    rows = [tidy_row(name, p, METRIC_SHIFT, torch.cat(parts)) for (name, p), parts in shifts.items()]
    return check_finite("token_consistency", pd.DataFrame(rows))

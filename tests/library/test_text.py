"""Texts: the WordPiece tokenizer, the AG News splits, the GRU autoencoder, token attributions and the token
feature protocol, on tiny data in the real formats."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from torch.nn import functional as F
from captum.attr import IntegratedGradients

from labelfree.attribution.examples import Objective
from labelfree.attribution.inputs import LabelFreeForwardArgs, token_attributions
from labelfree.attribution.tokens import EmbeddedText, TokenAttribution
from labelfree.data.splits import build_dataset
from labelfree.data.text import (
    BOS_ID,
    EOS_ID,
    MASK_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    decode_ids,
    encode_texts,
    token_strings,
    train_wordpiece,
    unescape_entities,
    vocabulary_digest,
)
from labelfree.models.gru import GRULayer, TextGRUAutoEncoder
from labelfree.models.registry import build_model
from labelfree.protocols.text import eligible_texts, token_consistency
from tests import ROOT
from tests.fixtures.ag_news import make_ag_news_rows, write_ag_news

TEXTS = [f"{title} {text}".replace("\\", " ") for _, title, text in make_ag_news_rows(40, seed=0)]
AG_CONFIG = {"name": "ag_news", "vocab_size": 120, "min_frequency": 2, "max_length": 24, "unescape_entities": True,
             "baseline_token": "mask", "train_per_class": None, "test_per_class": 4, "val_fraction": 0.25}


# ------------------------------------------------------------------------------------------ tokenizer
def test_special_tokens_padding_and_truncation():
    tokenizer = train_wordpiece(TEXTS, vocab_size=300)
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID] == [0, 1, 2, 3, 4]
    assert tokenizer.get_vocab_size() <= 300
    ids = encode_texts(tokenizer, ["GOAL.", TEXTS[0]], max_length=6)
    assert ids.dtype == torch.int64 and ids.shape == (2, 6)
    short = token_strings(tokenizer, ids[0])
    assert short == ["goal", ".", "[EOS]"] and ids[0, 3:].eq(PAD_ID).all()  # lowercased, split, ended, padded
    assert ids[1, -1] == EOS_ID and ids[1].ne(PAD_ID).all()  # cut to 5 pieces, then [EOS]
    assert not ids.eq(MASK_ID).any() and not ids.eq(BOS_ID).any()
    assert decode_ids(tokenizer, ids[0]) == "goal."
    unknown = encode_texts(tokenizer, ["\u4e2d"], max_length=4)  # a character the texts never held
    assert unknown[0, 0] == UNK_ID


def test_training_twice_gives_the_same_vocabulary_even_in_another_process():
    digest = vocabulary_digest(train_wordpiece(TEXTS, vocab_size=80))
    assert vocabulary_digest(train_wordpiece(TEXTS, vocab_size=80)) == digest
    code = ("import json, sys; from labelfree.data.text import train_wordpiece, vocabulary_digest; "
            "print(vocabulary_digest(train_wordpiece(json.loads(sys.stdin.read()), vocab_size=80)))")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(TEXTS), capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.strip()
    assert out == digest  # hash seeds differ between processes: ties must not be broken by hash order


def test_merges_are_learnt_by_frequency():
    tokenizer = train_wordpiece(["lowest lower low"] * 3 + ["newest"], vocab_size=40)
    vocab = tokenizer.get_vocab()
    assert {"low", "lower", "lowest"} <= set(vocab)
    assert token_strings(tokenizer, encode_texts(tokenizer, ["lowest"], 4)[0]) == ["lowest", "[EOS]"]


def test_bad_tokenizer_settings():
    with pytest.raises(ValueError, match="vocab_size must exceed the 5 special tokens"):
        train_wordpiece(TEXTS, vocab_size=5)
    with pytest.raises(ValueError, match="non-empty sequence of texts"):
        train_wordpiece("one text", vocab_size=50)
    with pytest.raises(ValueError, match="raise vocab_size"):
        train_wordpiece(["abcdefghij"], vocab_size=8)
    with pytest.raises(ValueError, match="max_length must be >= 2"):
        encode_texts(train_wordpiece(TEXTS, 80), TEXTS, 1)


def test_unescape_entities():
    assert unescape_entities('it#39;s #36;5 and quot;hi quot; a amp; b') == 'it\'s $5 and "hi " a & b'
    assert unescape_entities("plain text; fine") == "plain text; fine"


# --------------------------------------------------------------------------------------- the splits
def test_ag_news_splits(tmp_path):
    write_ag_news(tmp_path, n_train=48, n_test=24)
    data = build_dataset(AG_CONFIG, tmp_path, seed=3)
    assert data.train_x.dtype == torch.int64 and data.train_x.shape[1] == 24
    assert len(data.train_x) + len(data.val_x) == 48 and len(data.val_x) == 12
    assert torch.bincount(data.test_y).tolist() == [4, 4, 4, 4]
    assert data.baseline == MASK_ID and data.vocabulary[:5] == SPECIAL_TOKENS
    assert int(data.train_x.max()) < AG_CONFIG["vocab_size"] and len(data.vocabulary) <= AG_CONFIG["vocab_size"]
    assert data.train_x.eq(EOS_ID).sum(dim=1).eq(1).all()
    again = build_dataset(AG_CONFIG, tmp_path, seed=3)
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_x, data.test_x)
    assert build_dataset({**AG_CONFIG, "baseline_token": "pad"}, tmp_path, seed=3).baseline == PAD_ID
    with pytest.raises(ValueError, match=r"baseline_token='unk' is not accepted; expected one of \['mask', 'pad'\]"):
        build_dataset({**AG_CONFIG, "baseline_token": "unk"}, tmp_path, seed=3)


# -------------------------------------------------------------------------------------------- model
def test_gru_layer_equals_nn_gru():
    torch.manual_seed(0)
    reference = torch.nn.GRU(5, 7, batch_first=True)
    layer = GRULayer.from_torch(reference)
    x, h0 = torch.randn(3, 6, 5), torch.randn(1, 3, 7)
    expected, last = reference(x, h0)
    torch.testing.assert_close(layer(x, h0[0]), expected)
    torch.testing.assert_close(layer(x, h0[0], return_sequence=False), last[0])
    torch.testing.assert_close(layer(x, return_sequence=False), reference(x)[1][0])
    # a mask keeps the state: a text of 4 tokens then padding ends where nn.GRU ends after 4 steps
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]] * 3, dtype=torch.bool)
    torch.testing.assert_close(layer(x, mask=mask, return_sequence=False), reference(x[:, :4])[1][0])
    with pytest.raises(ValueError, match="one-layer, unidirectional"):
        GRULayer.from_torch(torch.nn.GRU(5, 7, num_layers=2))


def _ids(n: int = 5, length: int = 9, vocab: int = 40, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (n, length), generator=generator)
    for row in range(n):  # texts of different lengths, each ended by [EOS] then padding
        end = length - 1 - row % 3
        ids[row, end] = EOS_ID
        ids[row, end + 1:] = PAD_ID
    return ids


def test_model_shapes_and_per_example_loss():
    torch.manual_seed(0)
    model = build_model({"name": "text_gru_autoencoder", "vocab_size": 40, "embedding_dim": 6, "hidden_size": 8,
                         "teacher_forcing": 0.5})
    assert isinstance(model, TextGRUAutoEncoder)
    ids = _ids()
    assert model.encoder(ids).shape == (5, 8) and model(ids).shape == (5, 9, 40)
    loss = model.pretext_loss(ids)
    assert loss.shape == (5,)
    alone = torch.stack([model.pretext_loss(ids[i : i + 1])[0] for i in range(5)])
    torch.testing.assert_close(loss, alone)  # per example: no coupling across the batch
    torch.testing.assert_close(model.pretext_loss(ids), loss)  # perturb=False is deterministic
    # padding is ignored: what follows [PAD] changes neither the representation nor the loss
    other = ids.clone()
    other[4, -1] = PAD_ID  # row 4 ends one step earlier: its padding already starts at the last position
    changed = ids.clone()
    changed[0, -1] = ids[0, -1]  # (row 0 has no padding)
    torch.testing.assert_close(model.encoder(changed), model.encoder(ids))
    padded = torch.cat([ids, torch.zeros(5, 3, dtype=torch.int64)], dim=1)
    torch.testing.assert_close(model.encoder(padded), model.encoder(ids))
    torch.testing.assert_close(model.pretext_loss(padded), loss)
    # the [MASK] embedding is the zero vector and is not trained
    assert model.encoder.embedding.weight[MASK_ID].eq(0).all()


def test_teacher_forcing_during_training():
    torch.manual_seed(0)
    model = TextGRUAutoEncoder(40, 6, 8, teacher_forcing=1.0)
    ids = _ids()
    torch.testing.assert_close(model.pretext_loss(ids, perturb=True), model.pretext_loss(ids))
    model.teacher_forcing = 0.0  # greedy decoding: the step-by-step path, with the true first input [BOS]
    free = model.pretext_loss(ids, perturb=True)
    assert free.shape == (5,) and torch.isfinite(free).all() and not torch.allclose(free, model.pretext_loss(ids))
    forced = model.decoder.mixed(model.encoder(ids), ids, torch.ones(5, dtype=torch.bool))
    torch.testing.assert_close(forced, model(ids))  # the step-by-step path, all forced = the parallel path
    model.teacher_forcing = 0.5
    torch.manual_seed(3)
    first = model.pretext_loss(ids, perturb=True)
    torch.manual_seed(3)
    torch.testing.assert_close(model.pretext_loss(ids, perturb=True), first)  # seeded
    with pytest.raises(ValueError, match="teacher_forcing must be a probability"):
        TextGRUAutoEncoder(40, teacher_forcing=1.5)


def test_training_loss_computes_the_mixture_only_where_it_counts():
    """perturb=True skips padding targets and decodes forced and free texts apart: same values and gradients
    as the dense step-by-step mixture over every position (GRUDecoder.mixed), a padding token mid-text included."""
    torch.manual_seed(0)
    model = TextGRUAutoEncoder(40, 6, 8, teacher_forcing=0.5)
    ids = _ids(7, 10)
    ids[2, 3] = PAD_ID

    def dense(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        forced = torch.rand(len(ids)) < model.teacher_forcing
        logits = model.decoder.mixed(model.encoder(ids), ids, forced)
        nll = F.cross_entropy(logits.reshape(-1, 40), ids.reshape(-1), ignore_index=PAD_ID, reduction="none")
        return nll.reshape(ids.shape).sum(dim=1) / (ids != PAD_ID).sum(dim=1)

    params = list(model.parameters())
    for seed in range(4):
        expected = dense(seed)
        torch.manual_seed(seed)
        loss = model.pretext_loss(ids, perturb=True)
        torch.testing.assert_close(loss, expected)
        for got, want in zip(torch.autograd.grad(loss.sum(), params, allow_unused=True),
                             torch.autograd.grad(expected.sum(), params, allow_unused=True)):
            torch.testing.assert_close(got, want)


def test_per_example_gradients_equal_a_loop():
    torch.manual_seed(0)
    model = TextGRUAutoEncoder(40, 6, 8).eval()
    ids = _ids(4)
    objective = Objective(model)
    batched = objective.per_example_grads(ids, None, chunk_size=3)
    params = list(model.encoder.parameters())
    for i in range(len(ids)):
        grads = torch.autograd.grad(model.pretext_loss(ids[i : i + 1])[0], params)
        torch.testing.assert_close(batched[i], torch.cat([g.reshape(-1) for g in grads]), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------- attributions
def test_token_attributions():
    torch.manual_seed(0)
    model = TextGRUAutoEncoder(40, 6, 8).eval()
    ids = _ids()
    ig = TokenAttribution("integrated_gradients", model.encoder).attribute(ids, MASK_ID, n_steps=64)
    assert ig.shape == ids.shape and ig[ids == PAD_ID].eq(0).all()
    with torch.no_grad():  # completeness: the tokens' importances add up to g_x(x) - g_x(all [MASK])
        f, f0 = model.encoder(ids), model.encoder(torch.where(ids == PAD_ID, PAD_ID, MASK_ID))
    torch.testing.assert_close(ig.sum(dim=1), (f * f).sum(1) - (f * f0).sum(1), rtol=1e-3, atol=1e-4)
    # the same as Captum's IntegratedGradients on the embeddings (the [MASK] embedding is 0)
    direct = LabelFreeForwardArgs(IntegratedGradients(EmbeddedText(model.encoder, model.encoder.embedding)))
    with torch.no_grad():
        embedded = model.encoder.embedding(ids)
    expected = direct.attribute(embedded, additional_forward_args=(ids,), baselines=torch.zeros_like(embedded), n_steps=64)
    torch.testing.assert_close(ig, token_attributions(expected))
    gs = TokenAttribution("gradient_shap", model.encoder).attribute(ids, MASK_ID, n_samples=4, stdevs=0.0)
    assert gs.shape == ids.shape and gs[ids == PAD_ID].eq(0).all() and gs.abs().sum() > 0
    first = TokenAttribution("random", model.encoder, seed=2).attribute(ids, MASK_ID)
    assert torch.equal(first, TokenAttribution("random", model.encoder, seed=2).attribute(ids, MASK_ID))
    with pytest.raises(ValueError, match="Unknown token explainer 'saliency'"):
        TokenAttribution("saliency", model.encoder)
    with pytest.raises(ValueError, match="no submodule 'embed'"):
        TokenAttribution("integrated_gradients", model.encoder, "embed")


# ----------------------------------------------------------------------------------------- protocol
def test_token_consistency_protocol():
    torch.manual_seed(0)
    model = TextGRUAutoEncoder(40, 6, 8).eval()
    ids = _ids(6, 12)
    explainers = {name: TokenAttribution(method, model.encoder, seed=1) for name, method in
                  (("integrated_gradients", "integrated_gradients"), ("random_features", "random"))}
    frame = token_consistency(model.encoder, ids, explainers, {"integrated_gradients": {"n_steps": 16}},
                              [10, 50, 100], MASK_ID, [PAD_ID, EOS_ID], batch_size=4)
    assert list(frame.columns) == ["method", "level", "metric", "value", "std", "n"]
    assert len(frame) == 6 and set(frame["n"]) == {6} and (frame["value"] >= 0).all()
    full = frame[frame["level"] == 100]["value"]
    assert full.max() - full.min() < 1e-6  # every ranking masks every eligible token
    # masking is what the protocol says: at 100 % the shift of all eligible tokens replaced by [MASK]
    masked = torch.where((ids == PAD_ID) | (ids == EOS_ID), ids, MASK_ID)
    with torch.no_grad():
        expected = (model.encoder(ids) - model.encoder(masked)).pow(2).sum(1).mean()
    assert float(full.iloc[0]) == pytest.approx(float(expected), rel=1e-5)
    # texts too short for the smallest p are left out (n says so), none at all is an error
    short = ids.clone()
    short[0, 5], short[0, 6:] = EOS_ID, PAD_ID  # 5 tokens and [EOS]: 10 % of 5 rounds to 0, of 6 to 1
    assert eligible_texts(short, [10], [PAD_ID, EOS_ID]).tolist() == [False] + [True] * 5
    assert set(token_consistency(model.encoder, short, explainers, {}, [10], MASK_ID, [PAD_ID])["n"]) == {6}
    assert set(token_consistency(model.encoder, short, explainers, {}, [10], MASK_ID, [PAD_ID, EOS_ID])["n"]) == {5}
    with pytest.raises(ValueError, match="no test text has enough eligible tokens"):
        token_consistency(model.encoder, short[:1], explainers, {}, [10], MASK_ID, [PAD_ID, EOS_ID])
    assert isinstance(frame, pd.DataFrame)

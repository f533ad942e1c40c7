"""Texts as fixed-length token ids: a WordPiece vocabulary trained offline with the ``tokenizers`` library.

The tokenizer (:func:`train_wordpiece`) lowercases and cleans the text (BERT's normaliser: control characters
removed, accents stripped, CJK characters split), splits it into words and punctuation (BERT's
pre-tokeniser), then learns a WordPiece vocabulary of at most ``vocab_size`` entries from the given texts
only: nothing is downloaded. Its first ids are the special tokens of :data:`SPECIAL_TOKENS`:

* ``[PAD]`` (0) fills a text up to the fixed length; the autoencoder's encoder skips it and its loss ignores it;
* ``[UNK]`` (1) a word no WordPiece of the vocabulary can spell;
* ``[BOS]`` (2) starts the decoder's input; ``[EOS]`` (3) ends every text (the decoder learns where to stop);
* ``[MASK]`` (4) never occurs in a text: the token that replaces masked tokens (feature consistency).

:func:`encode_texts` turns texts into ``int64 [n, max_length]``: each text's WordPieces, cut to
``max_length - 1``, then ``[EOS]``, then ``[PAD]`` up to ``max_length``.

Determinism: the trainer is run single-threaded (``TOKENIZERS_PARALLELISM`` is not needed: the ids of a
trained vocabulary do not depend on threads here; :func:`vocabulary_digest` lets a caller check that two
trainings agree, and the tests train twice, in two processes, and compare).
"""

from __future__ import annotations

import hashlib
import heapq
import html
import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from tokenizers import decoders as token_decoders
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "MASK_ID",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "UNK_ID",
    "decode_ids",
    "encode_texts",
    "token_strings",
    "train_wordpiece",
    "unescape_entities",
    "vocabulary_digest",
]

#: The special tokens, in id order (their ids are fixed: 0..4).
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]")
PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID = range(len(SPECIAL_TOKENS))
#: Prefix of a WordPiece that continues a word (BERT's convention).
CONTINUATION = "##"

# HTML entities whose "&" the AG News files lost ("#39;", " quot;", "#36;"): restored, then unescaped
_ENTITY = re.compile(r"&?(#\d{1,5}|quot|amp|lt|gt|nbsp|hellip|rsquo|lsquo|rdquo|ldquo|ndash|mdash);")


def unescape_entities(text: str) -> str:
    """``text`` with the HTML entities that lost their ``&`` (AG News: ``"it#39;s"``, ``" quot;"``, ``"#36;5"``)
    turned back into characters (``"it's"``, ``'"'``, ``"$5"``); other text unchanged."""
    return html.unescape(_ENTITY.sub(lambda m: f"&{m.group(1)};", text))


def _normaliser_and_splitter() -> tuple[normalizers.Normalizer, pre_tokenizers.PreTokenizer]:
    """BERT's normaliser (lowercase, clean, strip accents, split CJK) and pre-tokeniser (words, punctuation)."""
    normaliser = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=True,
                                            lowercase=True)
    return normaliser, pre_tokenizers.BertPreTokenizer()


def word_counts(texts: Sequence[str]) -> Counter[str]:
    """How often each word occurs in ``texts`` after normalisation and pre-tokenisation."""
    normaliser, splitter = _normaliser_and_splitter()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in splitter.pre_tokenize_str(normaliser.normalize_str(text)))
    return counts


def _merged(left: str, right: str) -> str:
    return left + right[len(CONTINUATION):]


def learn_wordpiece_vocabulary(counts: Counter[str], vocab_size: int, min_frequency: int = 2) -> list[str]:
    """The WordPiece vocabulary (special tokens, alphabet, then merges in order) learnt from word counts.

    As the ``tokenizers`` WordPiece trainer does (the BPE procedure with ``##`` continuation pieces): start from
    each word's characters (``"news" -> n ##e ##w ##s``), then repeatedly merge the most frequent adjacent pair
    into a new piece until the vocabulary holds ``vocab_size`` entries or the best pair occurs fewer than
    ``min_frequency`` times. Unlike that trainer, ties are broken by the pieces themselves (lexicographic
    order), never by hash order, so the result is the same in every process.
    """
    words = [list(w[:1]) + [CONTINUATION + c for c in w[1:]] for w in sorted(counts)]
    freq = [counts[w] for w in sorted(counts)]
    alphabet = sorted({piece for word in words for piece in word})
    vocab = [*SPECIAL_TOKENS, *alphabet]
    known = set(vocab)
    pairs: defaultdict[tuple[str, str], int] = defaultdict(int)
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for index, (word, count) in enumerate(zip(words, freq)):
        for pair in zip(word, word[1:]):
            pairs[pair] += count
            where[pair].add(index)
    heap = [(-count, pair) for pair, count in pairs.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        negative, pair = heapq.heappop(heap)
        if pairs.get(pair, 0) != -negative:  # stale entry: the count changed since it was pushed
            continue
        if -negative < min_frequency:
            break
        piece = _merged(*pair)
        changed: set[tuple[str, str]] = set()
        for index in sorted(where.pop(pair, ())):
            word, count = words[index], freq[index]
            for old in zip(word, word[1:]):
                pairs[old] -= count
                changed.add(old)
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
                    merged.append(piece)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            words[index] = merged
            for new in zip(merged, merged[1:]):
                pairs[new] += count
                where[new].add(index)
                changed.add(new)
        pairs.pop(pair, None)
        for key in changed:
            if pairs.get(key, 0) > 0:
                heapq.heappush(heap, (-pairs[key], key))
            else:
                pairs.pop(key, None)
        if piece not in known:
            known.add(piece)
            vocab.append(piece)
    return vocab


def wordpiece_tokenizer(vocab: Sequence[str]) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` over ``vocab`` (ids = positions): BERT normaliser and pre-tokeniser, greedy
    longest-match-first WordPiece, ``[UNK]`` for a word no piece sequence spells."""
    if list(vocab[: len(SPECIAL_TOKENS)]) != list(SPECIAL_TOKENS) or len(set(vocab)) != len(vocab):
        raise ValueError(f"a vocabulary must start with {list(SPECIAL_TOKENS)} and hold each token once")
    tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)},
                                           unk_token=SPECIAL_TOKENS[UNK_ID], continuing_subword_prefix=CONTINUATION))
    tokenizer.normalizer, tokenizer.pre_tokenizer = _normaliser_and_splitter()
    tokenizer.decoder = token_decoders.WordPiece(prefix=CONTINUATION)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))  # already in the vocabulary: ids unchanged; decoding skips them
    return tokenizer


def train_wordpiece(texts: Sequence[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """A WordPiece tokenizer trained on ``texts`` only (:func:`learn_wordpiece_vocabulary`, deterministic).

    Args:
        texts: the training texts (nothing else is read).
        vocab_size: the largest vocabulary, special tokens included (fewer entries when the texts do not
            hold enough distinct pieces).
        min_frequency: a merge must occur at least this often.

    Returns:
        the ``tokenizers.Tokenizer``; ids 0..4 are :data:`SPECIAL_TOKENS`.
    """
    if isinstance(texts, str) or not len(texts):
        raise ValueError("train_wordpiece needs a non-empty sequence of texts (a list of strings)")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    vocab = learn_wordpiece_vocabulary(word_counts(texts), int(vocab_size), int(min_frequency))
    if len(vocab) > vocab_size:  # the alphabet alone is larger than the vocabulary asked for
        raise ValueError(f"the texts hold {len(vocab) - len(SPECIAL_TOKENS)} distinct characters, more than "
                         f"vocab_size={vocab_size} leaves room for; raise vocab_size")
    log.info("WordPiece vocabulary: %d tokens from %d texts", len(vocab), len(texts))
    return wordpiece_tokenizer(vocab)


def vocabulary_digest(tokenizer: Tokenizer) -> str:
    """SHA-256 of the vocabulary (token -> id, sorted by id): equal digests mean equal tokenizations."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str], max_length: int) -> Tensor:
    """Token ids ``int64 [n, max_length]``: each text's WordPieces cut to ``max_length - 1``, ``[EOS]``, then
    ``[PAD]`` (id 0) up to ``max_length``."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (at least one token and [EOS]), got {max_length}")
    ids = torch.full((len(texts), max_length), PAD_ID, dtype=torch.int64)
    for row, encoding in enumerate(tokenizer.encode_batch(list(texts), add_special_tokens=False)):
        pieces = encoding.ids[: max_length - 1] + [EOS_ID]
        ids[row, : len(pieces)] = torch.tensor(pieces, dtype=torch.int64)
    return ids


def token_strings(tokenizer: Tokenizer, ids: Tensor | Sequence[int], skip_padding: bool = True) -> list[str]:
    """The token of each id of one text ``[T]`` (``[PAD]`` left out when ``skip_padding``)."""
    values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    return [tokenizer.id_to_token(int(i)) or SPECIAL_TOKENS[UNK_ID] for i in values
            if not (skip_padding and int(i) == PAD_ID)]


def decode_ids(tokenizer: Tokenizer, ids: Tensor | Sequence[int]) -> str:
    """One text ``[T]`` of ids back to (lowercased) words, special tokens left out."""
    values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    return tokenizer.decode([int(i) for i in values], skip_special_tokens=True)

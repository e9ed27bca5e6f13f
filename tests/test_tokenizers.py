"""Tests for jaxclap.tokenizers: parity with transformers' tokenizers loading the same files
(MiniLM's real vocabulary; WordPiece, byte-level BPE, Qwen3-style tokenizer.json and
Gemma-style sentencepiece vocabularies trained here on the fly), deterministic
sentencepiece training, padding/truncation/mask layout, and pickling into worker processes."""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import multiprocessing
import operator
import os
import pickle
import shutil

import numpy as np
import pytest

from jaxclap import tokenizers as jt

ADJ = ["loud", "soft", "quiet", "harsh", "bright", "deep", "sharp", "gentle", "distant",
       "muffled", "rhythmic", "sudden"]
NOUN = ["dog", "engine", "bell", "bird", "voice", "violin", "door", "rain", "thunder",
        "kettle", "drummer", "crowd"]
VERB = ["barks", "hums", "rings", "sings", "speaks", "plays", "slams", "falls", "rumbles",
        "whistles", "cheers", "echoes"]
WHERE = ["in a hall", "near the river", "outside", "far away", "on a street", "behind a wall",
         "during the storm", "at night"]


def captions(n: int = 320) -> list[str]:
  """Demo-corpus-like captions. Their small word set caps a unigram vocabulary near 70."""
  combos = itertools.product(ADJ, NOUN, VERB, WHERE)
  return [f"a {a} {b} {v} {w}" for a, b, v, w in itertools.islice(combos, 0, None, 11)][:n]


# Accents, case, punctuation, CJK, emoji, control/odd whitespace, a literal special token,
# empty and whitespace-only texts, and one far longer than any max_len used.
VARIED = [
    "A dog barks.",
    "Héllo WÖRLD, naïve café — résumé!",
    "UPPERCASE and MiXeD case",
    "punctuation: (a) [b] {c}; 'd' \"e\"? ... !!! --- #hash @at 3.14 1,000",
    "中文字符 and 日本語のテキスト 한국어",
    "emoji 😀🎵🐕‍🦺 👍🏽",
    "tabs\tand\nnewlines\r\n  and   spaces",
    "zero\u200bwidth and \u00a0nbsp",
    "a [MASK] token in text",
    "",
    "   ",
    " ".join(["the quick brown fox jumps over the lazy dog"] * 60),
]


# --------------------------------------------------------------------------- MiniLM WordPiece


@pytest.fixture(scope="module")
def minilm_ref():
  transformers = pytest.importorskip("transformers")
  return transformers.AutoTokenizer.from_pretrained(str(jt.minilm_dir()))


def _ref_encode(ref, texts, max_len):
  out = ref(texts, padding="max_length", truncation=True, max_length=max_len,
            padding_side="right")
  return np.asarray(out["input_ids"]), np.asarray(out["attention_mask"])


def _assert_matches(tok, ref, texts, max_len):
  ids, mask = tok.encode(texts, max_len)
  ref_ids, ref_mask = _ref_encode(ref, texts, max_len)
  assert ids.dtype == mask.dtype == np.int32 and ids.shape == (len(texts), max_len)
  np.testing.assert_array_equal(ids, ref_ids)
  np.testing.assert_array_equal(mask, ref_mask)
  assert tok.pad_id == ref.pad_token_id


@pytest.mark.parametrize("max_len", [2, 8, 32, 300])
def test_minilm_matches_transformers(minilm_ref, max_len):
  # 300 is above the 128 that MiniLM's tokenizer.json stores as its truncation: our
  # max_len must win over it.
  tok = jt.load("minilm")
  ids, mask = tok.encode(VARIED, max_len)
  ref_ids, ref_mask = _ref_encode(minilm_ref, VARIED, max_len)
  assert ids.dtype == np.int32 and mask.dtype == np.int32
  assert ids.shape == mask.shape == (len(VARIED), max_len)
  np.testing.assert_array_equal(ids, ref_ids)
  np.testing.assert_array_equal(mask, ref_mask)
  assert tok.pad_id == minilm_ref.pad_token_id and tok.vocab_size == len(minilm_ref)
  # Truncated rows still end in [SEP].
  long_row = ids[-1]
  assert long_row[-1] == minilm_ref.sep_token_id and mask[-1].all()


def test_minilm_from_vocab_txt_only(minilm_ref, tmp_path):
  # A bare vocab.txt (+ tokenizer_config.json for do_lower_case) must build the same
  # pipeline as the folder's tokenizer.json.
  for name in ("vocab.txt", "tokenizer_config.json"):
    shutil.copy(jt.minilm_dir() / name, tmp_path / name)
  tok = jt.load("wordpiece", tmp_path)
  assert tok.kind == "wordpiece"
  ids, mask = tok.encode(VARIED, 32)
  ref_ids, ref_mask = _ref_encode(minilm_ref, VARIED, 32)
  np.testing.assert_array_equal(ids, ref_ids)
  np.testing.assert_array_equal(mask, ref_mask)


def test_minilm_decode():
  tok = jt.load("minilm")
  ids, mask = tok.encode(["Héllo WORLD, café!"], 16)
  assert tok.decode(ids[0]) == "hello world, cafe!"
  assert tok.decode(ids, mask) == ["hello world, cafe!"]


# --------------------------------------------------------------------------- WordPiece (BERT)

# Mixed case, so a cased vocabulary learns upper-case pieces.
CASED = ["The Dog BARKS", "A Loud Engine hums", "Violin plays in a HALL"]


@pytest.fixture(scope="module")
def wordpiece_dirs(tmp_path_factory):
  """Two vocab.txt folders (uncased, cased) and a tokenizer.json folder, trained here."""
  from tokenizers import BertWordPieceTokenizer

  out = {}
  for name, lowercase in (("uncased", True), ("cased", False)):
    d = tmp_path_factory.mktemp(f"wp_{name}")
    wp = BertWordPieceTokenizer(lowercase=lowercase)
    wp.train_from_iterator(captions() + VARIED[:8] + CASED * 3, vocab_size=300,
                           min_frequency=1, show_progress=False)
    wp.save_model(str(d))
    out[name] = d
    if not lowercase:
      # Trained from scratch, the tokenizer has no post-processor yet; BERT's adds
      # [CLS] ... [SEP].
      from tokenizers import processors

      wp.post_processor = processors.BertProcessing(
          ("[SEP]", wp.token_to_id("[SEP]")), ("[CLS]", wp.token_to_id("[CLS]")))
      out["json"] = tmp_path_factory.mktemp("wp_json")
      wp.save(str(out["json"] / "tokenizer.json"))
  return out


@pytest.mark.parametrize("vocab,config,lowercase", [
    ("uncased", None, True),       # no config: the vocabulary is uncased, so lower-case
    ("cased", None, False),        # no config: upper-case pieces in vocab.txt -> cased
    ("cased", True, True),         # tokenizer_config.json's do_lower_case wins
])
def test_wordpiece_matches_transformers(wordpiece_dirs, tmp_path, vocab, config, lowercase):
  transformers = pytest.importorskip("transformers")
  shutil.copy(wordpiece_dirs[vocab] / "vocab.txt", tmp_path / "vocab.txt")
  if config is not None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": config}))
  ref = transformers.BertTokenizerFast.from_pretrained(str(tmp_path), do_lower_case=lowercase)
  tok = jt.load("bert", tmp_path)
  assert tok.kind == "wordpiece" and tok.vocab_size == len(ref) == 300
  texts = VARIED + CASED
  for max_len in (2, 9, 40):
    _assert_matches(tok, ref, texts, max_len)
  ids, _ = tok.encode(["The Dog"], 8)
  assert (ids[0, 0], ids[0, 3]) == (ref.cls_token_id, ref.sep_token_id)
  # The caller's lowercase= beats both the config and the vocabulary.
  flipped = transformers.BertTokenizerFast.from_pretrained(str(tmp_path),
                                                           do_lower_case=not lowercase)
  _assert_matches(jt.load("wordpiece", tmp_path, lowercase=not lowercase), flipped, CASED, 12)


def test_wordpiece_tokenizer_json(wordpiece_dirs):
  transformers = pytest.importorskip("transformers")
  path = wordpiece_dirs["json"] / "tokenizer.json"
  ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), pad_token="[PAD]")
  tok = jt.load("hf", path)            # no config names the pad: [PAD] is found
  assert tok.kind == "tokenizer.json" and tok.num_special_tokens == 2
  for max_len in (2, 16):
    _assert_matches(tok, ref, VARIED + CASED, max_len)
  with pytest.raises(ValueError, match="lowercase= applies to a bare vocab.txt"):
    jt.load("wordpiece", path.parent, lowercase=True)


# --------------------------------------------------------------------------- byte-level BPE


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
  from tokenizers import ByteLevelBPETokenizer

  d = tmp_path_factory.mktemp("bpe")
  bpe = ByteLevelBPETokenizer()
  bpe.train_from_iterator(captions() + VARIED[:8], vocab_size=500, min_frequency=1,
                          special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                          show_progress=False)
  bpe.save_model(str(d))
  assert sorted(os.listdir(d)) == ["merges.txt", "vocab.json"]
  return d


@pytest.mark.parametrize("max_len", [2, 8, 64])
def test_roberta_bpe_matches_transformers(bpe_dir, max_len):
  transformers = pytest.importorskip("transformers")
  # Positional on purpose: in transformers 5 the vocab_file=/merges_file= keywords are
  # silently ignored and yield a 5-token default vocabulary.
  ref = transformers.RobertaTokenizerFast(str(bpe_dir / "vocab.json"), str(bpe_dir / "merges.txt"))
  tok = jt.load("roberta", bpe_dir)
  assert tok.kind == "bpe" and tok.vocab_size == len(ref) == 500
  texts = VARIED + [" leading space", "a <mask> here", "<s> literal </s>"]
  ids, mask = tok.encode(texts, max_len)
  ref_ids, ref_mask = _ref_encode(ref, texts, max_len)
  np.testing.assert_array_equal(ids, ref_ids)
  np.testing.assert_array_equal(mask, ref_mask)
  assert tok.pad_id == ref.pad_token_id
  assert tok.decode(tok.encode(["a loud dog barks"], 16)[0][0]) == "a loud dog barks"


def test_roberta_tokenizer_json_and_clap_alias(bpe_dir, tmp_path):
  # The same vocabulary as one tokenizer.json (how CLAP / roberta-base folders ship it).
  transformers = pytest.importorskip("transformers")
  from tokenizers import ByteLevelBPETokenizer, processors

  bpe = ByteLevelBPETokenizer(str(bpe_dir / "vocab.json"), str(bpe_dir / "merges.txt"))
  bpe.add_special_tokens(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
  bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
  bpe.save(str(tmp_path / "tokenizer.json"))
  ref = transformers.RobertaTokenizerFast(str(bpe_dir / "vocab.json"), str(bpe_dir / "merges.txt"))
  tok = jt.load("clap", tmp_path)
  assert tok.kind == "tokenizer.json" and tok.pad_id == 1
  for max_len in (2, 16):
    _assert_matches(tok, ref, VARIED + ["a <mask> here"], max_len)


# --------------------------------------------------------------------------- Qwen3 (tokenizer.json)

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2/Qwen3's pre-tokenizer split (contractions, letters, single digits, punctuation).
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _qwen_folder(folder, texts, *, eos_in_template: bool):
  """A Qwen3-shaped tokenizer.json + tokenizer_config.json: NFC, the regex split, byte
  level BPE, no BOS; pad = <|endoftext|>. ``eos_in_template``: the post-processor appends
  <|endoftext|> itself (Qwen3-Embedding's later files) and the config states no flags."""
  from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
  from tokenizers import processors, trainers

  tok = Tokenizer(models.BPE())
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=400, special_tokens=QWEN_SPECIALS, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  config = {"pad_token": "<|endoftext|>", "eos_token": "<|im_end|>", "bos_token": None}
  if eos_in_template:
    tok.post_processor = processors.TemplateProcessing(
        single="$A:0 <|endoftext|>:0", pair="$A:0 <|endoftext|>:0 $B:1 <|endoftext|>:1",
        special_tokens=[("<|endoftext|>", tok.token_to_id("<|endoftext|>"))])
  else:
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    config["add_bos_token"] = False
  folder.mkdir(parents=True, exist_ok=True)
  tok.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps(config))
  return folder


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
  return _qwen_folder(tmp_path_factory.mktemp("qwen3"), captions() + VARIED[:8],
                      eos_in_template=False)


@pytest.mark.parametrize("max_len", [1, 6, 64])
def test_qwen3_matches_transformers(qwen_dir, max_len):
  transformers = pytest.importorskip("transformers")
  ref = transformers.AutoTokenizer.from_pretrained(str(qwen_dir))
  texts = VARIED + ["it's 2024's song", "<|im_start|>user", "a dog<|endoftext|>"]
  # The "hf" kind is the tokenizer as is: no special tokens at all.
  plain = jt.load("hf", qwen_dir)
  assert plain.num_special_tokens == 0 and plain.pad_id == 0
  _assert_matches(plain, ref, texts, max_len)
  # "qwen3" appends <|endoftext|> for last-token pooling, as Qwen3-Embedding's reference
  # code does: tokenize truncated to max_len - 1, append the eod id, pad.
  tok = jt.load("qwen3", qwen_dir)
  eod = ref.convert_tokens_to_ids("<|endoftext|>")
  assert tok.appended_eos_id == eod and tok.num_special_tokens == 1
  ids, mask = tok.encode(texts, max_len)
  body = ref(texts, truncation=True, max_length=max_len - 1)["input_ids"] if max_len > 1 else [[]] * len(texts)
  want = np.full((len(texts), max_len), ref.pad_token_id)
  for r, row in enumerate(body):
    want[r, :len(row) + 1] = row + [eod]
  np.testing.assert_array_equal(ids, want)
  last = mask.sum(1) - 1
  assert (ids[np.arange(len(texts)), last] == eod).all()


def test_qwen3_eos_in_template_is_not_doubled(tmp_path):
  transformers = pytest.importorskip("transformers")
  folder = _qwen_folder(tmp_path / "emb", captions() + VARIED[:8], eos_in_template=True)
  ref = transformers.AutoTokenizer.from_pretrained(str(folder))
  tok = jt.load("qwen3", folder)
  assert tok.appended_eos_id is None and tok.num_special_tokens == 1
  for max_len in (1, 8, 64):
    _assert_matches(tok, ref, VARIED, max_len)
  with pytest.raises(ValueError, match="'<nope>' is not in the vocabulary"):
    jt.load("hf", folder, append_eos="<nope>")


# --------------------------------------------------------------------------- Gemma (sentencepiece)


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
  """A Gemma-shaped sentencepiece model: BPE with byte fallback, no dummy prefix, identity
  normalisation, split digits, Gemma's piece names and ids (<pad> 0, <eos> 1, <bos> 2,
  <unk> 3), saved as tokenizer.model with Gemma's tokenizer_config.json flags."""
  d = tmp_path_factory.mktemp("gemma")
  jt.train_sentencepiece(
      captions() + VARIED[:8], d / "tokenizer.model", vocab_size=500, model_type="bpe",
      byte_fallback=True, hard_vocab_limit=False, add_dummy_prefix=False,
      remove_extra_whitespaces=False, normalization_rule_name="identity", split_digits=True,
      pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
      bos_piece="<bos>", unk_piece="<unk>",
      user_defined_symbols=["<mask>", "<start_of_turn>", "<end_of_turn>"])
  (d / "tokenizer_config.json").write_text(json.dumps(
      {"add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>",
       "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}))
  return d


GEMMA_TEXTS = VARIED + ["  two  spaces", "digits 12345", "<start_of_turn>user a dog"]


@pytest.mark.parametrize("max_len", [1, 7, 64])
def test_gemma_sentencepiece_matches_transformers(gemma_dir, max_len):
  transformers = pytest.importorskip("transformers")
  # transformers converts tokenizer.model to its tokenizers pipeline.
  ref = transformers.GemmaTokenizer.from_pretrained(str(gemma_dir))
  tok = jt.load("gemma", gemma_dir)
  assert isinstance(tok, jt.SentencePieceTokenizer)
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.num_special_tokens) == (0, 1, 2, 1)
  _assert_matches(tok, ref, GEMMA_TEXTS, max_len)
  eos = jt.load("gemma3", gemma_dir / "tokenizer.model", add_eos=True)
  ids, mask = eos.encode(["a dog"], 8)
  assert ids[0, 0] == 2 and ids[0, mask[0].sum() - 1] == 1


def test_gemma_tokenizer_json(gemma_dir, tmp_path):
  # The tokenizer.json route matches transformers on everything, literal control tokens
  # included (the sentencepiece route encodes "<bos>" in a caption as text).
  transformers = pytest.importorskip("transformers")
  transformers.GemmaTokenizer.from_pretrained(str(gemma_dir)).save_pretrained(str(tmp_path))
  assert not (tmp_path / "tokenizer.model").exists()
  ref = transformers.GemmaTokenizer.from_pretrained(str(tmp_path))
  tok = jt.load("gemma", tmp_path)
  assert isinstance(tok, jt.HFTokenizer) and tok.num_special_tokens == 1
  texts = GEMMA_TEXTS + ["<bos> and <eos> literal"]
  for max_len in (1, 7, 64):
    _assert_matches(tok, ref, texts, max_len)
  sp_ids = jt.load("gemma", gemma_dir).encode(GEMMA_TEXTS, 64)[0]
  np.testing.assert_array_equal(tok.encode(GEMMA_TEXTS, 64)[0], sp_ids)


# --------------------------------------------------------------------------- sentencepiece


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
  path = tmp_path_factory.mktemp("spm") / "captions.model"
  return jt.SentencePieceTokenizer(jt.train_sentencepiece(captions(), path, vocab_size=64, seed=0))


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_training_is_deterministic(tmp_path, model_type):
  texts = captions()
  pa = jt.train_sentencepiece(texts, tmp_path / "a.model", vocab_size=60, model_type=model_type)
  pb = jt.train_sentencepiece(iter(texts), tmp_path / "sub" / "b.model", vocab_size=60,
                              model_type=model_type)
  assert pa.read_bytes() == pb.read_bytes()
  a, b = jt.SentencePieceTokenizer(pa), jt.SentencePieceTokenizer(pb)
  np.testing.assert_array_equal(a.encode(texts, 24)[0], b.encode(texts, 24)[0])
  assert a.vocab_size == 60
  assert (a.pad_id, a.bos_id, a.eos_id) == (0, 2, 3)


def test_sentencepiece_round_trip(spm_model):
  # In-vocabulary text: the training captions, and new sentences made of seen words.
  texts = captions()[:50] + ["a gentle violin plays near the river", "the crowd cheers at night"]
  ids, mask = spm_model.encode(texts, 64)
  assert mask.sum(1).max() < 64  # nothing truncated
  assert spm_model.decode(ids) == texts
  assert spm_model.decode(ids[0]) == texts[0]
  assert (ids != 1).all()  # no <unk>


def test_sentencepiece_padding_truncation_mask(spm_model, tmp_path):
  long = " ".join(captions()[:20])
  ids, mask = spm_model.encode(["a dog", "", long], 12)
  assert ids.shape == mask.shape == (3, 12) and ids.dtype == mask.dtype == np.int32
  bos, eos, pad = spm_model.bos_id, spm_model.eos_id, spm_model.pad_id
  n = mask.sum(1)
  assert n[1] == 2 and n[2] == 12
  for row, k in zip(ids, n):
    assert row[0] == bos and row[k - 1] == eos  # EOS survives truncation
    assert (row[k:] == pad).all()
  np.testing.assert_array_equal(mask, (np.arange(12)[None] < n[:, None]).astype(np.int32))
  # Without BOS/EOS: the rows are the bare pieces, truncated at the right.
  bare = jt.SentencePieceTokenizer(spm_model.model_proto, add_bos=False, add_eos=False)
  bids, bmask = bare.encode(["a dog", long], 12)
  np.testing.assert_array_equal(bids[1][:10], ids[2][1:11])
  assert bmask[1].all() and bare.decode(bids[0]) == "a dog"
  with pytest.raises(ValueError, match="max_len=1"):
    spm_model.encode(["a dog"], 1)
  with pytest.raises(TypeError, match="single string"):
    spm_model.encode("a dog", 8)


def test_sentencepiece_vocab_size_errors(tmp_path):
  texts = captions(60)
  too_large = r"vocab_size=5000 is too large.*at most vocab_size=(\d+)"
  with pytest.raises(ValueError, match=too_large) as e:
    jt.train_sentencepiece(texts, tmp_path / "big.model", vocab_size=5000)
  most = int(e.value.args[0].split("at most vocab_size=")[1].split(" ")[0])
  assert not (tmp_path / "big.model").exists()
  soft = jt.train_sentencepiece(texts, tmp_path / "soft.model", vocab_size=5000,
                                hard_vocab_limit=False)
  assert jt.SentencePieceTokenizer(soft).vocab_size == most
  # The suggested maximum is one sentencepiece really accepts.
  exact = jt.train_sentencepiece(texts, tmp_path / "max.model", vocab_size=most)
  assert jt.SentencePieceTokenizer(exact).vocab_size == most
  with pytest.raises(ValueError, match=r"vocab_size=10 cannot hold .* use vocab_size >= \d+"):
    jt.train_sentencepiece(texts, tmp_path / "small.model", vocab_size=10)


def test_sentencepiece_model_without_pad_needs_pad_id(tmp_path):
  jt.train_sentencepiece(captions(), tmp_path / "nopad.model", vocab_size=50, pad_id=-1,
                         unk_id=0, bos_id=1, eos_id=2)
  with pytest.raises(ValueError, match="no pad piece"):
    jt.SentencePieceTokenizer(tmp_path / "nopad.model")
  tok = jt.SentencePieceTokenizer(tmp_path / "nopad.model", pad_id=2)
  assert tok.encode(["a dog"], 8)[0][0, -1] == 2


# --------------------------------------------------------------------------- pickling, loading


def test_pickled_tokenizers_in_spawned_process(spm_model, qwen_dir, tmp_path):
  # The pickles carry the models themselves: a worker needs no access to the files.
  spm_path = tmp_path / "moved.model"
  spm_path.write_bytes(spm_model.model_proto)
  toks = [jt.load("sentencepiece", spm_path), jt.load("minilm"), jt.load("qwen3", qwen_dir)]
  texts = VARIED + captions(10)
  expected = [t.encode(texts, 20) for t in toks]
  blobs = [pickle.dumps(t) for t in toks]
  spm_path.unlink()
  ctx = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
    got = list(pool.map(operator.methodcaller("encode", texts, 20),
                        [pickle.loads(b) for b in blobs]))
    # Training is deterministic across processes too, not only within one.
    retrained = pool.submit(jt.train_sentencepiece, captions(), tmp_path / "child.model",
                            vocab_size=64, seed=0).result()
  assert retrained.read_bytes() == spm_model.model_proto
  for (eids, emask), (gids, gmask) in zip(expected, got):
    np.testing.assert_array_equal(gids, eids)
    np.testing.assert_array_equal(gmask, emask)
  assert all(len(b) < 2_000_000 for b in blobs)


def test_load_and_from_config(spm_model, bpe_dir, qwen_dir, gemma_dir, tmp_path):
  ml_collections = pytest.importorskip("ml_collections")
  (tmp_path / "spm").mkdir()
  (tmp_path / "spm" / "m.model").write_bytes(spm_model.model_proto)
  tok = jt.from_config({"kind": "sentencepiece", "path": str(tmp_path / "spm"), "add_bos": False})
  assert isinstance(tok, jt.SentencePieceTokenizer) and tok.num_special_tokens == 1
  assert isinstance(jt.from_config({"kind": "hf", "path": bpe_dir}), jt.HFTokenizer)
  assert jt.load("wordpiece", jt.minilm_dir()).kind == "tokenizer.json"
  cfg = ml_collections.ConfigDict(dict(kind="qwen3", path=str(qwen_dir)))
  assert jt.from_config(cfg).appended_eos_id == 0
  assert jt.from_config(dict(kind="qwen3", path=qwen_dir, append_eos=False)).num_special_tokens == 0
  gemma = jt.from_config(dict(kind="gemma", path=gemma_dir, add_bos=False))
  assert isinstance(gemma, jt.SentencePieceTokenizer) and gemma.num_special_tokens == 0
  # A tokenizer.json with no pad token anywhere must be told which one to use.
  from tokenizers import Tokenizer, models, pre_tokenizers

  bare = Tokenizer(models.WordLevel({"a": 0, "dog": 1, "<unk>": 2}, unk_token="<unk>"))
  bare.pre_tokenizer = pre_tokenizers.Whitespace()
  bare.save(str(tmp_path / "bare.json"))
  with pytest.raises(ValueError, match="no pad token named .* pass pad_token="):
    jt.load("hf", tmp_path / "bare.json")
  ids, mask = jt.load("hf", tmp_path / "bare.json", pad_token="<unk>").encode(["a dog"], 4)
  assert ids.tolist() == [[0, 1, 2, 2]] and mask.tolist() == [[1, 1, 0, 0]]
  with pytest.raises(ValueError, match="pad token '<pad>' .pad_token=. is not in the vocabulary"):
    jt.load("hf", tmp_path / "bare.json", pad_token="<pad>")
  with pytest.raises(FileNotFoundError, match="nope.model"):
    jt.load("sentencepiece", tmp_path / "nope.model")
  with pytest.raises(FileNotFoundError, match=r"vocab\.txt"):
    jt.load("wordpiece", tmp_path / "spm")
  with pytest.raises(FileNotFoundError, match=r"vocab\.json \+ merges\.txt"):
    jt.load("bpe", tmp_path / "spm")
  with pytest.raises(ValueError, match=r"unknown tokenizer kind 'bytes'; expected one of .*'gemma'.*'qwen3'"):
    jt.load("bytes", tmp_path)
  with pytest.raises(ValueError, match="no 'kind'"):
    jt.from_config({"path": "x"})

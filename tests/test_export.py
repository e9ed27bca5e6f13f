"""jaxclap.export: the demo's HTS-AT + RoBERTa run in transformers' CLAP format.

One short training run and one export through the CLI (subprocesses) serve the module.
transformers loads the folder strictly; its feature extractor computes jaxclap's log-mel;
audio and text embeddings and the zero-shot pipeline's probabilities equal jaxclap's; the
folder reads back to bitwise-identical variables; the feature normalisation folds exactly
into bn0; and runs with no exact equivalent are refused, naming the config field.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4
EMBED_DIM = 32   # runlocal's model.embed_dim: ClapProjectionLayer's hidden width is it
TOWERS = "audio=htsat,text=roberta"


def _env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  return env


def _demo_config(args=f"runlocal,{TOWERS}"):
  configs = os.path.join(ROOT, "configs")
  if configs not in sys.path:
    sys.path.insert(0, configs)
  import demo
  c = demo.get_config(args)
  c.model.head_activation = "relu"
  c.model.head_hidden = EMBED_DIM
  return c


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """(workdir, out): the demo trained for 4 steps, exported by ``python -m jaxclap.export``."""
  base = tmp_path_factory.mktemp("export")
  workdir, out = base / "run", base / "clap"
  subprocess.run([sys.executable, "-m", "jaxclap.main",
                  f"--config=configs/demo.py:runlocal,steps=4,{TOWERS}", f"--workdir={workdir}",
                  f"--config.corpus.data_dir={base / 'data'}",
                  "--config.model.head_activation=relu",
                  f"--config.model.head_hidden={EMBED_DIM}"],
                 cwd=ROOT, env=_env(), check=True, timeout=900, stdout=subprocess.DEVNULL)
  res = subprocess.run([sys.executable, "-m", "jaxclap.export", f"--workdir={workdir}",
                        f"--out={out}"], cwd=ROOT, env=_env(), check=True, timeout=600,
                       capture_output=True, text=True)
  assert res.stdout.strip().splitlines()[-1] == str(out)
  return str(workdir), str(out)


@pytest.fixture(scope="module")
def loaded(exported):
  """jaxclap's model, transformers' model and processor, test clips and their captions."""
  import transformers
  import jaxclap
  from jaxclap.corpus import records
  workdir, out = exported
  m = jaxclap.load(workdir)
  split = records.open_split(m.config.input.sources[0]["path"], "test")
  clips, captions = [], []
  for i in range(len(split)):
    r = records.decode(split[i])
    # No longer than the window: transformers' rand_trunc embeds a random crop of longer
    # clips where jaxclap averages its windows (the documented limitation).
    if len(r["audio"]) <= m.window:
      clips.append(r["audio"])
      captions.append(r["captions"][0])
    if len(clips) == 4:
      break
  assert len(clips) == 4, "the runlocal corpus should have 4 test clips of <= clip_seconds"
  clips.append(clips[0][:m.window // 3 - 100])   # repeated 3 times, then zeros
  model = transformers.ClapModel.from_pretrained(out).eval()
  processor = transformers.ClapProcessor.from_pretrained(out)
  return m, model, processor, clips, captions


def test_transformers_loads_it_strictly(exported):
  import transformers
  workdir, out = exported
  model, info = transformers.ClapModel.from_pretrained(out, output_loading_info=True)
  assert {k: list(v) for k, v in info.items()} == {
      "missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
  cfg = model.config
  assert (cfg.projection_dim, cfg.projection_hidden_act) == (EMBED_DIM, "relu")
  assert cfg.audio_config.num_mel_bins == 32 and cfg.audio_config.spec_size == 128
  assert cfg.text_config.pad_token_id == 1 and cfg.text_config.max_position_embeddings == 514
  processor = transformers.ClapProcessor.from_pretrained(out)
  fe = processor.feature_extractor
  assert (fe.sampling_rate, fe.feature_size, fe.max_length_s, fe.fft_window_size,
          fe.hop_length, fe.padding, fe.truncation) == (16000, 32, 4, 1024, 160, "repeatpad",
                                                        "rand_trunc")
  assert processor.tokenizer.pad_token_id == 1 and processor.tokenizer.model_max_length == 56
  meta = json.load(open(os.path.join(out, "jaxclap_export.json")))
  assert meta["step"] == 4 and meta["config"]["model"]["audio"]["name"] == "htsat"


def test_feature_extractor_computes_our_log_mel(loaded):
  import jax.numpy as jnp
  from jaxclap.input_pipeline import crop_or_pad
  from jaxclap.models import two_towers
  m, _, processor, clips, _ = loaded
  # Through the processor: every frame of the window (no max_length leaks in from the
  # tokenizer), one channel, no fusion.
  x = processor(audio=clips, sampling_rate=16000, return_tensors="np")
  assert x["input_features"].shape == (len(clips), 1, 401, 32)
  for ours, theirs in (("repeat", "repeatpad"), ("zero", "pad")):
    waves, lens = zip(*(crop_or_pad(c, m.window, None, ours) for c in clips))
    spec, _ = two_towers.spectrogram(m.config.features, jnp.asarray(np.stack(waves)),
                                     jnp.asarray(lens))
    got = processor.feature_extractor(clips, sampling_rate=16000, padding=theirs,
                                      return_tensors="np")["input_features"][:, 0]
    # dB; float32 FFTs against numpy's float64 -> complex64 STFT (measured: 3e-4 dB max).
    assert np.abs(got - np.asarray(spec)).max() <= 2e-3, ours


def test_audio_embeddings_match(loaded):
  import torch
  m, model, processor, clips, _ = loaded
  with torch.no_grad():
    got = model.get_audio_features(**processor(audio=clips, sampling_rate=16000,
                                               return_tensors="pt")).pooler_output.numpy()
  want = m.embed_audio(clips)
  assert np.abs(got - want).max() <= TOL
  # ...and the clips' embeddings differ far beyond that tolerance.
  assert np.abs(want[:, None] - want[None]).max() > 100 * TOL


def test_text_embeddings_and_ids_match(loaded):
  import torch
  m, model, processor, _, captions = loaded
  inputs = processor(text=captions, padding=True, return_tensors="pt")
  ids, mask = m.tokenizer.encode(captions, int(m.config.input.max_text_len))
  for row, (ours, n) in enumerate(zip(ids, mask.sum(1))):
    assert inputs["attention_mask"][row].sum() == n
    np.testing.assert_array_equal(inputs["input_ids"][row, :n].numpy(), ours[:n])
  with torch.no_grad():
    got = model.get_text_features(**inputs).pooler_output.numpy()
  assert np.abs(got - m.embed_text(captions)).max() <= TOL


def test_zero_shot_pipeline_matches(exported, loaded):
  import transformers
  m, _, _, clips, captions = loaded
  prompts = list(dict.fromkeys(captions)) + ["A man speaking slowly."]
  pipe = transformers.pipeline("zero-shot-audio-classification", model=exported[1])
  want = m.zero_shot(clips, prompts)
  decided = 0
  for clip, p in zip(clips, want):
    res = pipe(clip, candidate_labels=prompts, hypothesis_template="{}")
    got = np.array([next(r["score"] for r in res if r["label"] == q) for q in prompts])
    assert np.abs(got - p).max() <= TOL
    top2 = np.sort(p)[-2:]
    # A 4-step model's probabilities are nearly uniform: compare the top-1 label where
    # jaxclap's margin is far above the float error (1e-7), which is most clips.
    if top2[1] - top2[0] > 1e-5:
      assert res[0]["label"] == prompts[int(p.argmax())]
      decided += 1
  assert decided >= 3


def test_the_folder_reads_back_to_identical_variables(exported, loaded):
  import jax
  from flax import traverse_util
  from jaxclap import export
  m = loaded[0]
  back = traverse_util.flatten_dict(export.import_clap(exported[1]), sep="/")
  ours = traverse_util.flatten_dict(jax.device_get(dict(m.variables)), sep="/")
  assert sorted(back) == sorted(ours)
  for k, v in ours.items():
    assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k   # bitwise


def test_normalisation_folds_into_bn0(loaded):
  """A run normalising its dB features ((x + 48) / 28) exports to a model that takes raw
  dB: the fold is exact algebra; reading back un-folds it to within one rounding."""
  import jax
  import ml_collections
  import torch
  import transformers
  from flax import traverse_util
  from jaxclap import export, inference
  m, _, processor, clips, _ = loaded
  cfg = ml_collections.ConfigDict(m.config.to_dict())
  cfg.features.norm_mean, cfg.features.norm_std = -48.0, 28.0
  ours = inference.Model(cfg, m.variables, m.tokenizer, m.model)
  want = ours.embed_audio(clips)
  assert np.abs(want - m.embed_audio(clips)).max() > 100 * TOL   # the norm matters
  sd = export.clap_state_dict(cfg, m.variables)
  model = transformers.ClapModel(export.clap_config(cfg)).eval()
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
  with torch.no_grad():
    got = model.get_audio_features(**processor(audio=clips, sampling_rate=16000,
                                               return_tensors="pt")).pooler_output.numpy()
  assert np.abs(got - want).max() <= TOL

  back = traverse_util.flatten_dict(export.import_clap(sd, cfg), sep="/")
  orig = traverse_util.flatten_dict(jax.device_get(dict(m.variables)), sep="/")
  eps = np.finfo(np.float32).eps
  for k, v in orig.items():
    if k == "params/audio/bn0/scale":       # gamma / std, times std
      np.testing.assert_allclose(back[k], v, rtol=eps, atol=0)
    elif k == "batch_stats/audio/bn0/mean":  # mean + std * mu, less mean, over std
      folded = np.abs(sd["audio_model.audio_encoder.batch_norm.running_mean"])
      assert np.all(np.abs(back[k] - v) <= eps * (folded / 28.0 + np.abs(v))), k
    else:
      assert np.array_equal(back[k], v), k


@pytest.mark.parametrize("change, match", [
    (lambda c: c.model.update(head_hidden=64), r"model\.head_hidden=64"),
    (lambda c: c.model.update(head="linear"), r"model\.head='linear'"),
    (lambda c: c.features.update(win_length=400), r"features\.win_length=400"),
    (lambda c: c.features.update(pad_mode="constant"), r"features\.pad_mode='constant'"),
    (lambda c: c.features.update(n_mels=64), r"features\.n_mels=64"),
    (lambda c: c.features.update(kind="fbank"), r"features\.kind='fbank'"),
    (lambda c: c.input.update(clip_seconds=2.5), r"input\.clip_seconds=2\.5"),
    (lambda c: c.model.text.update(pooling="cls"), r"model\.text\.pooling='cls'"),
    (lambda c: c.model.text.update(padding_idx=None), r"model\.text\.padding_idx"),
])
def test_runs_without_an_exact_equivalent_are_refused(change, match):
  from jaxclap import export
  c = _demo_config()
  export.check(c)
  change(c)
  with pytest.raises(export.NotExportable, match=match):
    export.check(c)


def test_other_towers_and_tokenizers_are_refused_and_gelu_heads_map():
  from jaxclap import export
  with pytest.raises(export.NotExportable, match=r"model\.audio\.name='vit'"):
    export.check(_demo_config("runlocal,audio=vit,text=roberta"))
  with pytest.raises(export.NotExportable, match=r"model\.text\.padding_idx"):
    export.check(_demo_config("runlocal,audio=htsat,text=minilm"))   # BERT positions
  with pytest.raises(export.NotExportable, match=r"tokenizer\.kind='minilm'"):
    export.hf_tokenizer(_demo_config("runlocal,audio=htsat,text=minilm"))
  c = _demo_config()
  c.model.head_activation = "gelu"   # exact erf GELU: transformers' ACT2FN["gelu"]
  assert export.clap_config(c).projection_hidden_act == "gelu"


def test_cli_help(capsys):
  from jaxclap.export import __main__ as cli
  with pytest.raises(SystemExit) as e:
    cli.main(["--help"])
  assert e.value.code == 0
  out = capsys.readouterr().out
  assert "--workdir" in out and "--out" in out and "ClapModel" in out


def test_export_bert_inverts_import_bert_for_bare_encoders():
  """``convert.export_bert`` alone: a RoBERTa-style tower into a bare ``RobertaModel``
  (whose index buffers are not persistent: ``buffers=False``), strictly, and back."""
  import flax.linen as nn
  import jax
  import torch
  import transformers
  from flax import traverse_util
  from jaxclap.models import bert, convert
  tower = bert.BertTower(vocab_size=50, hidden_size=8, depth=2, num_heads=2, mlp_dim=16,
                         max_len=20, type_vocab_size=1, padding_idx=1, layer_norm_eps=1e-5,
                         pooling="pooler")
  ids = np.full((1, 6), 5, np.int32)
  params = nn.meta.unbox(tower.init(jax.random.PRNGKey(0), ids, np.ones_like(ids))["params"])
  rng = np.random.default_rng(0)   # norms and biases away from their 1 / 0 init
  params = jax.tree.map(lambda x: np.asarray(x) + rng.normal(size=x.shape).astype(np.float32),
                        params)
  sd = convert.export_bert(params, buffers=False)
  ref = transformers.RobertaModel(transformers.RobertaConfig(
      vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
      intermediate_size=16, max_position_embeddings=20, type_vocab_size=1))
  ref.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  back = traverse_util.flatten_dict(convert.import_bert(ref.state_dict(), params))
  for k, v in traverse_util.flatten_dict(params).items():
    assert np.array_equal(back[k], v), k
  with_buffers = convert.export_bert(params, prefix="text_model.")
  np.testing.assert_array_equal(with_buffers["text_model.embeddings.position_ids"],
                                np.arange(20)[None])
  assert with_buffers["text_model.embeddings.token_type_ids"].shape == (1, 20)


@pytest.mark.parametrize("mae_weight", [0.0, 0.1])
def test_the_way_back_expects_the_decoder_exactly_when_training_made_it(mae_weight):
  """A ViT with ``mae_depth > 0`` has decoder parameters only when a loss term runs it
  (``terms.uses_decoder``); ``import_export``'s target must agree with training's, or an
  export of a run trained without the MAE term would not read back."""
  import jax
  import flax.linen as nn
  from jaxclap import checkpoints, configs, export
  from jaxclap.models import two_towers
  c = configs.load("demo", "runlocal,audio=vit,text=bert")
  assert int(c.model.audio.mae_depth) > 0
  configs.set_terms(c, info_nce=1.0, mae=mae_weight)
  model = two_towers.from_config(c.model)
  trained = jax.eval_shape(lambda: nn.meta.unbox(checkpoints.init_variables(
      model, c, jax.random.PRNGKey(0), jax.random.PRNGKey(1))))
  target = export.variable_shapes(c)
  shapes = lambda t: jax.tree_util.tree_map(lambda x: tuple(x.shape), t)
  assert shapes(target["params"]) == shapes(trained["params"])
  assert ("decoder" in target["params"]["audio"]) == (mae_weight > 0)


def test_a_hole_in_an_exported_state_dict_names_the_keys(tmp_path):
  """``convert.save_strict`` reports missing / unexpected keys as ``CheckpointMismatch`` (with
  ``strict=True`` torch raised first and that check never ran)."""
  import torch
  from jaxclap import export
  from jaxclap.models import convert
  lin = torch.nn.Linear(2, 3)
  sd = {"weight": np.zeros((3, 2), np.float32), "extra": np.zeros(1, np.float32)}
  with pytest.raises(convert.CheckpointMismatch, match=r"missing \['bias'\], unexpected \['extra'\]"):
    convert.save_strict(lin, sd, str(tmp_path / "out"))

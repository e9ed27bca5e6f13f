"""The inference API (``jaxclap.load(workdir)``) given what a hostile but realistic user
gives it: the inference rows of the README's fuzz table, one test each, asserting what
the user sees. Plus a diverged (NaN) run, which must never give a number.

The run folder is the demo's runlocal model (BERT text tower, so it is small) with
random weights, written as a training run writes one: ``config.json`` and an Orbax
checkpoint of the train state's params; step 1 finite, step 2 all NaN (as
``--config.optim.lr=1e30`` leaves it). No corpus and no training: the model's quality
plays no part in how inputs are checked, cut, mixed and resampled.
"""

import logging

import jax
import numpy as np
import pytest

import jaxclap
from jaxclap import windows

SR = 16000   # runlocal's input.sample_rate


def _random_variables(config, seed=0):
  """The model's variables with random values: shapes from ``jax.eval_shape`` of its init
  (compiling the init would take longer than everything here)."""
  import flax.linen as nn
  from jaxclap import checkpoints
  from jaxclap.models import two_towers
  model = two_towers.from_config(config.model, checkpoints.compute_dtype(config))
  rng = jax.random.PRNGKey(0)
  shapes = jax.eval_shape(lambda: nn.meta.unbox(checkpoints.init_variables(model, config,
                                                                            rng, rng)))
  r = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if "scale" in name and "logit" not in name:   # LayerNorm scales
      return np.ones(s.shape, s.dtype)
    if "bias" in name:
      return np.zeros(s.shape, s.dtype)
    return (0.05 * r.standard_normal(s.shape)).astype(s.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A run folder: step 1 random finite weights, step 2 the same with every float NaN."""
  import orbax.checkpoint as ocp
  from jaxclap import checkpoints, configs
  c = configs.load("demo", "runlocal,text=bert")
  workdir = str(tmp_path_factory.mktemp("run"))
  checkpoints.write_config(workdir, c)
  v = _random_variables(c)
  params, model_state = v.pop("params"), v
  nan = jax.tree_util.tree_map(lambda x: np.full_like(x, np.nan), params)
  mgr = ocp.CheckpointManager(checkpoints.folder(workdir), item_names=checkpoints.ITEMS,
                              options=ocp.CheckpointManagerOptions(create=True))
  for step, p in ((1, params), (2, nan)):
    mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(
        {"params": p, "model_state": model_state})))
  mgr.wait_until_finished()
  mgr.close()
  return workdir


@pytest.fixture(scope="module")
def model(run_dir):
  return jaxclap.load(run_dir, step=1)


def _tone(seconds, sr=SR, hz=220.0, phase=0.0):
  t = np.arange(int(round(seconds * sr))) / sr
  return (0.3 * np.sin(2 * np.pi * hz * t + phase)).astype(np.float32)


def _unit_rows(e):
  return np.all(np.isfinite(e)) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)


def test_empty_prompt_list(model):
  """Empty prompt or clip lists: a ValueError saying which list is empty (was numpy's
  "need at least one array to concatenate")."""
  clip = _tone(1.0)
  with pytest.raises(ValueError, match="zero_shot: prompts is empty"):
    model.zero_shot([clip], [])
  with pytest.raises(ValueError, match="embed_text: texts is empty"):
    model.embed_text([])
  with pytest.raises(ValueError, match="clips is empty"):
    model.zero_shot([], ["A man speaking.", "A woman speaking."])
  with pytest.raises(ValueError, match="clips is empty"):
    model.embed_audio([])
  with pytest.raises(TypeError, match="prompts is one string"):
    model.zero_shot([clip], "A man speaking.")
  p = model.zero_shot([clip], ["A man speaking.", "A woman speaking."])
  assert p.shape == (1, 2) and np.allclose(p.sum(1), 1.0)


def test_10k_character_prompt(model, caplog):
  """A 10,000-character prompt: embedded from its first input.max_text_len tokens, as
  the tower was trained, with a logged warning giving its length in tokens."""
  head = "a fast, high-pitched female voice speaking clearly. " * 20   # ~1,000 characters
  long_a = (head + "then a low and slow whisper. " * 400)[:10_000]
  long_b = (head + "and a loud excited shout! " * 400)[:10_000]
  max_len = int(model.config.input.max_text_len)
  _, mask = model.tokenizer.encode([long_a], 40_016)
  tokens = int(mask.sum())
  assert tokens > 10 * max_len
  with caplog.at_level(logging.WARNING):
    e = model.embed_text([long_a, "short", long_b])
  warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
  assert f"2 of 3 texts are longer than the text tower's {max_len} tokens" in warning
  assert f"text 0 (10,000 characters, {tokens:,} tokens)" in warning and "text 2 (" in warning
  assert "text 1 " not in warning
  # Only the first max_len tokens count: the two differ after ~1,000 characters only.
  np.testing.assert_allclose(e[0], e[2], atol=1e-6)
  assert _unit_rows(e) and not np.allclose(e[0], e[1], atol=1e-3)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    model.embed_text(["A man speaking."])
  assert not caplog.records


def test_missing_file(model, tmp_path):
  """A path that does not exist, a folder and a text file named .wav: an error naming
  the clip's position and its path."""
  import soundfile as sf
  good = str(tmp_path / "good.wav")
  sf.write(good, _tone(1.0), SR)
  missing = str(tmp_path / "no such clip.wav")
  with pytest.raises(FileNotFoundError, match=r"clip 1 \('.*no such clip\.wav'\): no such file"):
    model.embed_audio([good, missing])
  with pytest.raises(FileNotFoundError, match=r"clip 0 .*: not a file"):
    model.zero_shot([str(tmp_path)], ["a", "b"])
  text = tmp_path / "notes.wav"
  text.write_text("not audio at all\n" * 50)
  with pytest.raises(ValueError, match=r"clip 0 \('.*notes\.wav'\): not readable as audio"):
    model.embed_audio(str(text))
  assert _unit_rows(model.embed_audio(good))


def test_stereo_44k(model, tmp_path, caplog):
  """A stereo 44.1 kHz clip, as soundfile reads it ([n, 2]) with sample_rate=44100, as a
  file, or as [2, n] in a list (librosa's / torchaudio's layout): one clip, mixed down to
  mono with a logged warning, resampled to the model's 16 kHz (was: n clips of 2 samples)."""
  import soundfile as sf
  left, right = _tone(2.0, 44100, 220.0), _tone(2.0, 44100, 330.0, 1.0)
  stereo = np.stack([left, right], 1)                      # [n, 2]
  path = str(tmp_path / "stereo44k.wav")
  sf.write(path, stereo, 44100, subtype="FLOAT")
  read, sr = sf.read(path, dtype="float32")
  assert read.shape == (88200, 2) and sr == 44100
  with caplog.at_level(logging.WARNING):
    from_array = model.embed_audio(read, sample_rate=44100)
  assert "of shape (88200, 2) is taken as one clip of 2 channels [samples, channels]" in (
      caplog.text)
  mono = model.embed_audio([(left + right) / 2], sample_rate=44100)
  from_file = model.embed_audio(path)          # the header's 44.1 kHz, channels mixed
  from_list = model.embed_audio([read.T], sample_rate=44100)
  assert from_array.shape == (1, mono.shape[1]) and _unit_rows(from_array)
  for e in (from_file, from_list):
    np.testing.assert_allclose(e, mono, atol=1e-5)
  np.testing.assert_allclose(from_array, mono, atol=1e-5)
  # zero_shot takes it the same way: one row.
  assert model.zero_shot(read, ["a", "b"], sample_rate=44100).shape == (1, 2)
  # Resampled, not taken as 16 kHz: the same tones made at 16 kHz embed alike (the
  # resampled clip differs by rounding and edge effects only); at the wrong rate they
  # would be slowed down 2.76 times.
  at16 = model.embed_audio([(_tone(2.0, SR, 220.0) + _tone(2.0, SR, 330.0, 1.0)) / 2])
  wrong = model.embed_audio([(left + right) / 2])   # 44.1 kHz samples said to be 16 kHz
  assert np.abs(mono - at16).max() < 0.1 * np.abs(wrong - at16).max()
  # A [2, n] array on its own is a batch of two clips (documented), with a warning
  # saying how to pass one stereo clip; a 3-D array is refused.
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    two = model.embed_audio(read.T, sample_rate=44100)
  assert two.shape[0] == 2 and "pass [array] (a list of one clip)" in caplog.text
  with pytest.raises(ValueError, match=r"3-D array of shape \(1, 88200, 2\)"):
    model.embed_audio(read[None], sample_rate=44100)


def test_short_clip_0_01s(model):
  """0.01 s (160 samples at 16 kHz, 441 at 44.1 kHz) and even one sample: zero-padded to
  the window with the real length masked, a finite unit embedding. 0 samples: an error."""
  short = _tone(0.01)
  assert short.size == 160
  e = model.embed_audio([short, _tone(0.01, 44100), short[:1]], sample_rate=None)
  assert _unit_rows(e)
  # Masked, not just padded: the real samples decide the embedding.
  assert not np.allclose(e[0], model.embed_audio([0.5 * _tone(0.01, hz=3000.0)])[0], atol=1e-4)
  assert _unit_rows(model.embed_audio(_tone(0.01, 44100), sample_rate=44100))
  with pytest.raises(ValueError, match=r"clip 1 is empty \(0 samples\)"):
    model.embed_audio([short, np.zeros(0, np.float32)])
  with pytest.raises(ValueError, match=r"clip 0 has 3 NaN/Inf samples of 160"):
    model.embed_audio([np.where(np.arange(160) < 3, np.nan, short)])


def test_10_minute_clip(model):
  """A 10-minute clip: cut into the training window with a half-window hop (399 windows
  of 3 s), each embedded, the mean re-normalised: exactly what embedding the windows as
  clips and pooling them gives."""
  rng = np.random.default_rng(0)
  clip = (0.1 * rng.standard_normal(600 * SR)).astype(np.float32)
  clip *= np.repeat(rng.uniform(0.2, 1.0, 600), SR).astype(np.float32)   # loudness varies
  e = model.embed_audio(clip)
  assert e.shape[0] == 1 and _unit_rows(e)
  wins, lens = windows.windows(clip, model.window, model.hop, model.config.input.pad)
  assert len(wins) == 399 and set(lens) == {model.window}
  per_window = model.embed_audio(wins)
  pooled = per_window.mean(0)
  np.testing.assert_allclose(e[0], pooled / np.linalg.norm(pooled), atol=1e-5)
  # Not the first window's embedding alone (nor any one window's).
  assert np.abs(per_window - e).max(axis=1).min() > 1e-3


def test_nan_model_gives_no_number(run_dir, model):
  """A diverged run (every parameter NaN at step 2, as lr=1e30 left one): ``load`` refuses
  it, naming the arrays and what to do (was: ``zero_shot`` returned [[nan, nan]]); the
  same weights handed to a ``Model`` raise NonFiniteError from every entry point."""
  with pytest.raises(windows.NonFiniteError,
                     match=r"\(its latest checkpoint\): (\d+) of \1 parameter arrays hold "
                     r"NaN/Inf \(params/audio/.*load an earlier step.*steps \[1, 2\]"):
    jaxclap.load(run_dir)
  nan = jax.tree_util.tree_map(lambda x: np.full_like(x, np.nan), model.variables)
  bad = model.with_variables(nan)
  clip = _tone(1.0)
  with pytest.raises(windows.NonFiniteError, match=r"embed_audio: window embeddings: 2 of 2 "):
    bad.embed_audio([clip, clip])
  with pytest.raises(windows.NonFiniteError, match=r"embed_text: text embeddings: 1 of 1 texts"):
    bad.embed_text(["A man speaking."])
  with pytest.raises(windows.NonFiniteError):
    bad.zero_shot([clip], ["a", "b"])
  assert issubclass(windows.NonFiniteError, ValueError)

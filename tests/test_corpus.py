"""Tests of the embedded espeak-ng corpus: determinism, split contract, captions that say
true things, readability, caching, declared tasks, and acoustic checks that the labels
are true of the audio, measured with estimators independent of the ones the corpus uses.

Two tiny builds (scale 0.02, ~90 clips) are shared by the module; the file runs in well
under a minute on 2 cores.
"""

import collections
import json
import os
import re
import time

import numpy as np
import pytest

from jaxclap.corpus import captions as captions_lib
from jaxclap.corpus import espeak
from jaxclap.corpus import records
from jaxclap.corpus import speech_corpus as sc
from jaxclap.corpus import speech_tasks

SCALE = 0.02
SPLITS = ("train", "validation", "test")
META_KEYS = ("voice_id", "engine", "espeak_voice", "espeak_variant", "voice", "gender",
             "age_group", "quality", "language", "accent", "english_accent", "text",
             "pitch_level", "pitch_st", "f0_hz", "rate_level", "rate_wpm", "loudness_level",
             "loudness_dbfs", "change", "segments", "duration_s", "split")


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
  """The same corpus built twice: two processes, and in-process (num_workers=0)."""
  a = sc.build(str(tmp_path_factory.mktemp("a")), scale=SCALE, num_workers=2)
  b = sc.build(str(tmp_path_factory.mktemp("b")), scale=SCALE, num_workers=0)
  return a, b


def _read(path, split):
  source = records.open_split(path, split)
  return [records.decode(source[i]) for i in range(len(source))]


@pytest.fixture(scope="module")
def clips(builds):
  return {split: _read(builds[0], split) for split in SPLITS}


# ---------------------------------------------------------------- independent measures


def _autocorr_f0(x, sr=sc.SAMPLE_RATE):
  """Median F0 by windowed autocorrelation (Boersma 1993), not YIN as the corpus uses."""
  frame, hop = int(0.06 * sr), int(0.01 * sr)
  lo, hi = sr // 500, sr // 55
  win = np.hanning(frame)
  frames = np.lib.stride_tricks.sliding_window_view(x, frame)[::hop]
  frames = (frames - frames.mean(1, keepdims=True)) * win
  energy = (frames ** 2).sum(1)
  frames = frames[energy > energy.max() * 0.05]
  ac = np.fft.irfft(np.abs(np.fft.rfft(frames, 2 * frame)) ** 2)[:, :hi]
  acw = np.fft.irfft(np.abs(np.fft.rfft(win, 2 * frame)) ** 2)[:hi]
  r = ac / (ac[:, :1] + 1e-12) / (acw / acw[0])  # undo the window's own taper
  lag = lo + r[:, lo:].argmax(1)
  good = r[np.arange(len(lag)), lag] > 0.5
  return float(np.median(sr / lag[good]))


def _rms_db(x):
  """RMS (dBFS) of the samples within 30 dB of the peak envelope: plain numpy."""
  env = np.convolve(x ** 2, np.ones(400) / 400, mode="same")
  return float(10 * np.log10(env[env > env.max() * 1e-3].mean()))


def _speech_seconds(x, sr=sc.SAMPLE_RATE):
  env = np.abs(x)
  idx = np.nonzero(env > env.max() * 10 ** (-40 / 20))[0]
  return (idx[-1] - idx[0]) / sr


def _group(meta):
  return "child" if meta["age_group"] == "child" else meta["gender"]


# ---------------------------------------------------------------- the synthesizer


def test_synth_is_a_pure_function():
  synth = espeak.Synthesizer()
  text = "The quick brown fox jumps over the lazy dog."
  first = synth.synth(text, "en-us+whisperf", seed=3)
  synth.synth("Something else entirely, to move espeak's state.", "de+croak", seed=9)
  again = synth.synth(text, "en-us+whisperf", seed=3)
  assert first.dtype == np.float32 and len(first) > espeak.SAMPLE_RATE
  assert np.array_equal(first, again)


def test_unknown_voice_is_named():
  synth = espeak.Synthesizer()
  with pytest.raises(espeak.VoiceNotFound, match="nosuchvariant"):
    synth.synth("hello", "en-us+nosuchvariant")
  with pytest.raises(espeak.VoiceNotFound, match="xx-nowhere"):
    synth.synth("hello", "xx-nowhere")


# ---------------------------------------------------------------- the built corpus


def test_a_worker_that_dies_fails_the_build_naming_it(tmp_path):
  """A render worker killed mid-build (here SIGKILL; a crash in native code looks the
  same) stops the build with an error saying so and what to do, instead of the pool
  waiting forever for the dead worker's chunk; nothing is marked complete."""
  import signal
  import threading
  import psutil
  me = psutil.Process()

  def kill_a_worker():
    deadline = time.time() + 120
    while time.time() < deadline:
      workers = [p for p in me.children() if "spawn_main" in " ".join(p.cmdline())]
      if workers:
        time.sleep(1.0)   # let it take a chunk
        os.kill(workers[0].pid, signal.SIGKILL)
        return
      time.sleep(0.05)

  killer = threading.Thread(target=kill_a_worker, daemon=True)
  killer.start()
  with pytest.raises(RuntimeError, match="a corpus worker process died while rendering"):
    sc.build(str(tmp_path), scale=0.02, num_workers=2)
  killer.join()
  built = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path) for f in fs if f == sc._MARKER]
  assert not built


def test_builds_are_identical(builds):
  for split in SPLITS:
    a, b = _read(builds[0], split), _read(builds[1], split)
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for ra, rb in zip(a, b):
      assert ra["audio"].tobytes() == rb["audio"].tobytes(), ra["id"]
      assert (ra["captions"], ra["fine_captions"], ra["metadata"]) == \
             (rb["captions"], rb["fine_captions"], rb["metadata"]), ra["id"]


def test_records_are_readable(clips):
  for split in SPLITS:
    assert clips[split], split
    for r in clips[split]:
      assert r["sample_rate"] == sc.SAMPLE_RATE and r["audio"].dtype == np.float32
      assert 1.5 < len(r["audio"]) / sc.SAMPLE_RATE < sc.MAX_SECONDS
      missing = [k for k in META_KEYS if k not in r["metadata"]]
      assert not missing, (r["id"], missing)
      assert r["metadata"]["split"] == split and r["metadata"]["engine"] == espeak.ENGINE


def test_splits_are_disjoint(clips):
  voices = {s: {r["metadata"]["voice_id"] for r in clips[s]} for s in SPLITS}
  pairs = {s: {r["metadata"]["voice"] for r in clips[s]} for s in SPLITS}
  texts = {s: {r["metadata"]["text"] for r in clips[s]} for s in SPLITS}
  assert not voices["train"] & voices["test"]
  assert not pairs["train"] & pairs["test"]
  assert voices["validation"] <= voices["train"]
  assert not texts["train"] & texts["test"] and not texts["train"] & texts["validation"]


def test_full_plan_holds_out_variants_and_sentences():
  plan = sc.make_plan(0, 1.0)  # check_plan runs inside; here: the held-out variants
  variants = {s: {c["speaker"]["espeak_variant"] for c in plan if c["split"] == s}
              for s in SPLITS}
  assert {"m2", "m6", "f4"} <= variants["test"] and not {"m2", "m6", "f4"} & variants["train"]
  assert len(plan) == sum(sc.SPLIT_CLIPS.values())


def test_captions_say_true_things(clips):
  negation = re.compile(r"\b(not|no|non|never|without|isn't|doesn't)\b", re.I)
  for r in (r for split in SPLITS for r in clips[split]):
    meta = r["metadata"]
    assert len(r["captions"]) >= 3 and len(set(r["captions"])) == len(r["captions"]), r["id"]
    if meta["change"]:
      assert len(r["fine_captions"]) >= 2, r["id"]
    for caption in r["captions"] + r["fine_captions"]:
      assert not negation.search(caption), caption
    for caption in r["captions"]:
      for (key, value), patterns in captions_lib.PHRASES.items():
        if any(re.search(p, caption) for p in patterns):
          assert meta[key] == value, (r["id"], key, meta[key], caption)
    if meta["language"] != "English":
      assert any(meta["language"] in c for c in r["captions"]), r["captions"]


def test_change_narrations_match_segments(clips):
  words = {"speeds_up": ("slow", "fast"), "slows_down": ("fast", "slow"),
           "pitch_rises": ("low", "high"), "pitch_falls": ("high", "low"),
           "gets_louder": ("quiet", "loud"), "gets_quieter": ("loud", "quiet")}
  seen = 0
  for r in (r for split in SPLITS for r in clips[split]):
    meta = r["metadata"]
    if not meta["change"]:
      continue
    seen += 1
    dim = sc.CHANGES[meta["change"]][0]
    assert tuple(s[f"{dim}_level"] for s in meta["segments"]) == words[meta["change"]]
    assert meta[f"{dim}_level"] == "varies"
  assert seen >= 3


def test_binary_tasks_cover_the_corpus(clips):
  train = [r["metadata"] for r in clips["train"]]
  for name, task in sc.BINARY_TASKS.items():
    assert not set(task.positive) & set(task.negative), name
    assert task.positive_prompt != task.negative_prompt
    labels = [sc.task_label(m, task) for m in train]
    assert labels.count(1) and labels.count(0), (name, labels.count(1), labels.count(0))
  # mid/normal levels and whispers are outside the pitch task
  pitch = sc.BINARY_TASKS["pitch"]
  assert all(sc.task_label(m, pitch) is None for m in train
             if m["pitch_level"] in (None, "mid", "varies"))


def test_cache_is_reused(builds):
  path = builds[0]
  stamps = {f: os.stat(os.path.join(path, f)).st_mtime_ns for f in os.listdir(path)}
  start = time.time()
  assert sc.build(os.path.dirname(os.path.dirname(path)), scale=SCALE) == path
  assert time.time() - start < 10
  assert stamps == {f: os.stat(os.path.join(path, f)).st_mtime_ns for f in os.listdir(path)}
  # another seed or scale is another dataset version, and another plan
  assert len({sc._version(0, SCALE), sc._version(1, SCALE), sc._version(0, 0.03)}) == 3
  assert sc.plan_hash(sc.make_plan(1, SCALE)) != sc.plan_hash(sc.make_plan(0, SCALE))


def test_builds_declare_their_tasks(builds):
  """Evaluators learn the tasks from the corpus itself (tasks.json), not from its name."""
  for path in builds:
    tasks = records.read_tasks(path)
    assert tasks == speech_tasks.TASKS
    assert tasks["binary"] == dict(sc.BINARY_TASKS)
    assert all(isinstance(t, records.BinaryTask) for t in tasks["binary"].values())
    assert all(isinstance(t, records.MultiClassTask) for t in tasks["multiclass"].values())
    assert all(isinstance(t, records.GradedTask) for t in tasks["graded"].values())


def test_cached_build_without_tasks_gets_them_not_a_rebuild(builds):
  """A build from before tasks.json (or with older tasks) is brought up to date in
  place: tasks change no record, so the audio is not synthesised again."""
  path = builds[1]
  tasks_file = os.path.join(path, records.TASKS_FILE)
  others = {f: os.stat(os.path.join(path, f)).st_mtime_ns for f in os.listdir(path)
            if f != records.TASKS_FILE}
  for stale in (None, records.tasks_json({"binary": {"gender": sc.BINARY_TASKS["gender"]}})):
    if stale is None:
      os.remove(tasks_file)
    else:
      with open(tasks_file, "w") as f:
        f.write(stale)
    start = time.time()
    assert sc.build(os.path.dirname(os.path.dirname(path)), scale=SCALE, num_workers=0) == path
    assert time.time() - start < 10
    assert records.read_tasks(path) == speech_tasks.TASKS
    assert others == {f: os.stat(os.path.join(path, f)).st_mtime_ns for f in os.listdir(path)
                      if f != records.TASKS_FILE}


# ---------------------------------------------------------------- labels are true of the audio


def test_pitch_labels_match_independent_f0(clips):
  agree, errors = 0, []
  for r in (r for split in SPLITS for r in clips[split]):
    meta = r["metadata"]
    if meta["pitch_level"] not in ("low", "high") or meta["change"]:
      continue
    st = 12 * np.log2(_autocorr_f0(r["audio"]) / sc.PITCH_REF_HZ[_group(meta)])
    agree += (st > 1) == (meta["pitch_level"] == "high") and abs(st) > 1
    errors.append(abs(st - meta["pitch_st"]))
  assert len(errors) >= 10 and agree / len(errors) >= 0.95, (agree, len(errors))
  assert np.median(errors) < 0.5, errors


def test_loudness_labels_match_rms(clips):
  level = {"quiet": [], "loud": []}
  for r in (r for split in SPLITS for r in clips[split]):
    if r["metadata"]["loudness_level"] in level:
      level[r["metadata"]["loudness_level"]].append(_rms_db(r["audio"]))
  assert len(level["quiet"]) >= 5 and len(level["loud"]) >= 5
  assert min(level["loud"]) - max(level["quiet"]) >= 10, level


def test_controlled_pairs():
  """Same speaker, same text, one attribute changed: the audio moves the right way."""
  spk = next(s for s in sc.speakers() if s["espeak_voice"] == "en-us" and s["espeak_variant"] == "f1")
  text = "Serious inside else memory if six field live near the river."
  audio = {}
  for name, kw in {"low": dict(pitch="low"), "high": dict(pitch="high"),
                   "slow": dict(rate="slow"), "fast": dict(rate="fast"),
                   "quiet": dict(loudness="quiet"), "loud": dict(loudness="loud")}.items():
    _, rec = sc.render(sc.clip_spec(spk, text, seed=1, **kw))
    audio[name] = records.from_pcm16(rec["audio"])
    assert json.loads(rec["metadata"])[{"low": "pitch_level", "high": "pitch_level",
                                        "slow": "rate_level", "fast": "rate_level",
                                        "quiet": "loudness_level", "loud": "loudness_level"}[name]] == name
  semitones = 12 * np.log2(_autocorr_f0(audio["high"]) / _autocorr_f0(audio["low"]))
  assert semitones > 5, semitones
  assert _speech_seconds(audio["fast"]) < 0.7 * _speech_seconds(audio["slow"])
  assert _rms_db(audio["loud"]) - _rms_db(audio["quiet"]) > 10


def test_fast_clips_are_shorter_per_word(clips):
  per_word = {"slow": [], "fast": []}
  for r in (r for split in SPLITS for r in clips[split]):
    meta = r["metadata"]
    if meta["rate_level"] in per_word and meta["language"] == "English" and not meta["change"]:
      per_word[meta["rate_level"]].append(_speech_seconds(r["audio"]) / meta["n_words"])
  assert len(per_word["slow"]) >= 3 and len(per_word["fast"]) >= 3
  assert np.median(per_word["fast"]) < 0.75 * np.median(per_word["slow"]), per_word


def test_rare_classes_are_heard_in_several_timbres():
  """Creaky, shaky, child and whispered voices each come in >= 2 variants (timbres) in
  training, both sexes where the class has a sex, and each is in the test split: with
  one variant per class a model learns the speaker, not the attribute."""
  train, test = collections.defaultdict(set), collections.defaultdict(set)
  for s in sc.speakers():
    if s["quality"] == "modal" and s["age_group"] == "young adult":
      continue
    cls = "child" if s["age_group"] == "child" else s["quality"]
    (train if s["split"] == "train" else test)[cls].add(s["espeak_variant"])
  assert set(train) == set(test) == {"creaky", "shaky", "child", "whispered"}
  for cls, variants in train.items():
    assert len(variants) >= 2, (cls, variants)
    if cls != "child":
      assert {sc.VARIANTS[v].gender for v in variants} == {"male", "female"}, (cls, variants)
  # Each extra variant file is used, and declares the sex its VARIANTS entry says.
  for name, text in sc.EXTRA_VARIANTS.items():
    assert any(s["espeak_variant"] == name for s in sc.speakers()), name
    declared = re.search(r"^gender (\w+)", text, re.M)
    assert (declared and declared.group(1)) == (sc.VARIANTS[name].gender or None), name


def test_variants_f0_table_is_measured():
  """``VARIANTS[v].f0_hz`` (what pitch calibration aims from) agrees with an independent
  autocorrelation estimate on en-us speech at pitch 50 / range 50, within 1.5 semitones,
  for every voiced variant: shipped and our own files alike."""
  synth = espeak.Synthesizer(sc.EXTRA_VARIANTS)
  text = "The quick brown fox jumps over the lazy dog near the river bank."
  import librosa
  for name in (v for v, spec in sc.VARIANTS.items() if spec.f0_hz is not None):
    w = synth.synth(text, f"en-us+{name}", pitch=50, pitch_range=50)
    w = librosa.resample(w, orig_sr=espeak.SAMPLE_RATE, target_sr=sc.SAMPLE_RATE)
    st = 12 * np.log2(_autocorr_f0(w) / sc.VARIANTS[name].f0_hz)
    assert abs(st) < 1.5, (name, st)

"""Standard benchmarks (``evaluate.BENCHMARKS``) on corpora built by the data/ builders from
fake downloads, scored with a model whose answers are known: ``_ToneModel`` embeds a clip
by the class its dominant frequency encodes (an FFT of the waveform it is given) and a
text by the class it names, so which clips it gets right, and hence every number, follows
from how the fake download was generated. A clip generated at another class's frequency
is a known error."""

import math
import os
import re
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_data_builders import _build, _wav, _write  # noqa: E402

from data import clotho, crema_d, esc50  # noqa: E402
from jaxclap import evaluate, report  # noqa: E402


class _ToneModel:
  """embed_audio: one-hot of the nearest of ``freqs`` (+ a bias dimension); embed_text:
  one-hot of the class ``parse(text)`` names. The dominant frequency is measured, not
  looked up: the clip goes through the builder's resampling and the record format."""

  def __init__(self, freqs, parse):
    self.freqs, self.parse = np.asarray(freqs, float), parse
    self.d = len(freqs) + 1

  def _hot(self, idx):
    e = np.zeros(self.d)
    e[-1] = 0.1   # a bias every embedding shares: a prompt naming no class is not zero
    for i in idx:
      e[i] = 1.0
    return e / np.linalg.norm(e)

  def embed_audio(self, clips, sample_rate):
    out = []
    for w in clips:
      spec = np.abs(np.fft.rfft(w * np.hanning(len(w))))
      f = np.argmax(spec) * sample_rate / len(w)
      out.append(self._hot([int(np.argmin(np.abs(self.freqs - f)))]))
    return np.stack(out)

  def embed_text(self, texts):
    return np.stack([self._hot(self.parse(t)) for t in texts])


# ESC-50: four classes, one clip of each per fold; fold 3 also has a rooster clip
# recorded at the dog's frequency (a known error).
_ESC_CLASSES = ("dog", "rooster", "rain", "siren")
_ESC_FREQ = {c: 200.0 + 40 * esc50.CATEGORIES.index(c) for c in esc50.CATEGORIES}


def _esc50_model():
  words = {esc50._common.words(c): i for i, c in enumerate(esc50.CATEGORIES)}

  def parse(text):   # only CLAP's prompt is understood: another wording fails the test
    m = re.fullmatch(r"This is a sound of (.+)\.", text)
    assert m, f"not CLAP's ESC-50 prompt: {text!r}"
    return [words[m.group(1)]]
  return _ToneModel([_ESC_FREQ[c] for c in esc50.CATEGORIES], parse)


def build_esc50(tmp_path, confusable=True):
  """A fake ESC-50-master download built by data/esc50.py; returns the corpus path."""
  d = tmp_path / "ESC-50-master"
  lines = ["filename,fold,target,category,esc10,src_file,take"]
  for fold in range(1, 6):
    for k, c in enumerate(_ESC_CLASSES):
      t = esc50.CATEGORIES.index(c)
      name = f"{fold}-{1000 * fold + k}-A-{t}.wav"
      lines.append(f"{name},{fold},{t},{c},{c in esc50.ESC10},{1000 * fold + k},A")
      _wav(d / "audio" / name, sr=44100, seconds=0.5, freq=_ESC_FREQ[c])
  if confusable:
    lines.append("3-9999-B-1.wav,3,1,rooster,True,9999,B")
    _wav(d / "audio" / "3-9999-B-1.wav", sr=44100, seconds=0.5, freq=_ESC_FREQ["dog"])
  _write(d / "meta" / "esc50.csv", "\n".join(lines) + "\n")
  return _build(esc50, d, tmp_path / "out")


def test_esc50_five_fold_zero_shot_and_linear_probe(tmp_path, capsys):
  path = build_esc50(tmp_path)
  capsys.readouterr()
  r = evaluate.run_benchmark(_esc50_model(), "esc50", path)
  esc = r["multiclass"]["esc50"]
  # Every clip right but fold 3's rooster-labelled dog tone: fold 3 is 4/5, the others 1.
  assert esc["folds"] == pytest.approx([1, 1, 0.8, 1, 1])
  assert esc["WA"] == pytest.approx(0.96)
  assert esc["UA"] == pytest.approx((4 + (1 + 0.5 + 1 + 1) / 4) / 5)   # fold 3: rooster 1/2
  assert esc["clips"] == 21
  conf = np.asarray(esc["confusion"])
  dog, rooster = esc50.CATEGORIES.index("dog"), esc50.CATEGORIES.index("rooster")
  assert conf[rooster, dog] == 1 and conf.trace() == 20 and conf.sum() == 21
  # ESC-10 (siren is not in it): fold 3 is 3/4.
  assert r["multiclass"]["esc10"]["folds"] == pytest.approx([1, 1, 0.75, 1, 1])
  # The probe trained on four folds: the one-hot features separate the classes, so only
  # fold 3's confusable clip is missed when fold 3 is the test fold.
  assert r["linear_probe"]["esc50"]["accuracy"] == pytest.approx(0.96)
  table = evaluate.format_table(r)
  assert "esc50" in table and "96.0%" in table
  # A corpus without ESC-50's folds and task is refused, naming what it lacks.
  with pytest.raises(ValueError, match="needs fold1..fold5 and the task esc50"):
    evaluate.run_benchmark(_esc50_model(), "esc50", _crema_path(tmp_path / "c"))


# CREMA-D: emotion and sex in the frequency (a woman's tone 20 Hz above a man's).
_EMO = tuple(crema_d.EMOTIONS.values())
_SEX = ("male", "female")


def _crema_freq(emotion, sex):
  return 300.0 + 60 * _EMO.index(emotion) + 20 * _SEX.index(sex)


def _crema_model():
  def parse(text):
    t = text.lower()
    idx = [i for i, e in enumerate(_EMO) if re.search(rf"\b{e}\b", t)]
    if re.search(r"\b(man|male)\b", t):
      idx.append(len(_EMO))
    if re.search(r"\b(woman|female)\b", t):
      idx.append(len(_EMO) + 1)
    return idx
  freqs = [_crema_freq(e, s) for e in _EMO for s in _SEX]

  class Model(_ToneModel):
    """Audio: the (emotion, sex) tone -> emotion one-hot and sex one-hot."""

    def embed_audio(self, clips, sample_rate):
      out = []
      for w in clips:
        spec = np.abs(np.fft.rfft(w * np.hanning(len(w))))
        j = int(np.argmin(np.abs(np.asarray(freqs) - np.argmax(spec) * sample_rate / len(w))))
        out.append(self._hot([j // 2, len(_EMO) + j % 2]))
      return np.stack(out)
  return Model(list(range(len(_EMO) + 2)), parse)


def _crema_path(tmp_path, wrong=()):
  d = tmp_path / "CREMA-D"
  actors = [(1001 + i, 30 + i, "Male" if i % 2 == 0 else "Female") for i in range(10)]
  _write(d / "VideoDemographics.csv", "ActorID,Age,Sex,Race,Ethnicity\n" + "".join(
      f"{a},{age},{sex},Caucasian,Not Hispanic\n" for a, age, sex in actors))
  codes = {v: k for k, v in crema_d.EMOTIONS.items()}
  for a, _, sex in actors:
    for e in ("angry", "happy", "sad"):
      heard = "angry" if (a, e) in wrong else e   # recorded in another emotion's tone
      _wav(d / "AudioWAV" / f"{a}_DFA_{codes[e]}_XX.wav", seconds=0.5,
           freq=_crema_freq(heard, sex.lower()))
  return _build(crema_d, d, tmp_path / "out")


def test_crema_d_emotion_and_sex_zero_shot_and_probe(tmp_path, capsys):
  # Test actors (speaker_splits): 1009 (man) and 1010 (woman), 3 emotions each; 1010's
  # sad clip is heard as angry.
  path = _crema_path(tmp_path, wrong={(1010, "sad")})
  capsys.readouterr()
  r = evaluate.run_benchmark(_crema_model(), "crema_d", path)
  emo = r["multiclass"]["emotion"]
  assert emo["clips"] == 6 and emo["WA"] == pytest.approx(5 / 6)
  assert emo["UA"] == pytest.approx((1 + 1 + 0.5) / 3)   # recall over angry, happy, sad
  assert np.asarray(emo["confusion"])[_EMO.index("sad"), _EMO.index("angry")] == 1
  assert r["zero_shot"]["sex"] == 1.0 and r["zero_shot_counts"]["sex"] == \
      {"clips": 6, "positive": 3}
  assert np.isnan(r["graded"]["age"]["spearman"])   # the model has no notion of age
  # Probes trained on the train actors (every clip heard right): sex and emotion
  # separate; the test's angry-sounding sad clip is the one emotion error.
  assert r["linear_probe"]["sex"]["accuracy"] == 1.0
  assert r["linear_probe"]["emotion"]["accuracy"] == pytest.approx(5 / 6)
  assert "retrieval" in r
  out = report.write(str(tmp_path / "report"), r, title="crema_d",
                     table=evaluate.format_table(r))
  files = sorted(os.listdir(os.path.dirname(out)))
  assert {"results.json", "report.md", "bars_multiclass.png", "bars_zero_shot.png",
          "bars_linear_probe.png", "confusion_multiclass_emotion.png"} <= set(files)
  md = open(out).read()
  assert "![multiclass / emotion confusion matrix](confusion_multiclass_emotion.png)" in md


_CLOTHO_FREQ = {"A": 300.0, "B": 500.0, "C": 700.0, "D": 900.0, "t1": 1100.0, "t2": 1300.0,
                "v1": 1500.0}


def build_clotho(tmp_path):
  """A fake Clotho download (four test clips with five captions each; clip B recorded
  at clip A's tone) built by data/clotho.py; returns the corpus path."""
  d = tmp_path / "clotho"
  names = {"development": ["t1.wav", "t2.wav"], "validation": ["v1.wav"],
           "evaluation": ["A.wav", "B.wav", "C.wav", "D.wav"]}
  header = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
  meta_header = "file_name,keywords,sound_id,sound_link,start_end_samples,manufacturer,license\n"
  for split, files in names.items():
    _write(d / f"clotho_captions_{split}.csv", header + "".join(
        f"{f}," + ",".join(f"{f[:-4]} caption {i}" for i in range(1, 6)) + "\n" for f in files))
    _write(d / f"clotho_metadata_{split}.csv", meta_header + "".join(
        f"{f},x,1,l,\"[0, 1]\",m,lic\n" for f in files))
    for f in files:
      heard = "A" if f == "B.wav" else f[:-4]
      _wav(d / split / f, sr=44100, seconds=0.5, freq=_CLOTHO_FREQ[heard])
  return _build(clotho, d, tmp_path / "out")


def test_clotho_retrieval_counts_every_caption(tmp_path, capsys):
  path = build_clotho(tmp_path)
  capsys.readouterr()
  freq = _CLOTHO_FREQ
  order = sorted(freq, key=freq.get)
  model = _ToneModel([freq[n] for n in order],
                     lambda t: [order.index(t.split(" caption")[0])])
  r = evaluate.run_benchmark(model, "clotho", path)["retrieval"]
  # text->audio, 20 queries: A's 5 captions tie clips A and B (R@1 1/2); B's captions
  # score every clip alike (1/4); C's and D's are right.
  assert r["text_to_audio/R@1"] == pytest.approx((5 * 0.5 + 5 * 0.25 + 10) / 20)
  assert r["text_to_audio/R@5"] == 1.0
  # audio->text: B's clip has A's five captions above all of its own: rank >= 6.
  assert r["audio_to_text/R@1"] == pytest.approx(0.75)
  assert r["audio_to_text/R@5"] == pytest.approx(0.75)
  # R@10 for B: its 5 captions tie with C's and D's 10 after A's 5; in a random order of
  # the 15, B's first is within ranks 6..10 unless the first 5 of the 15 are all C / D.
  assert r["audio_to_text/R@10"] == pytest.approx((3 + 1 - math.comb(10, 5) / math.comb(15, 5)) / 4)
  assert r["chance/R@1"] == 0.25


def test_multi_caption_retrieval_reduces_to_paired_rows():
  rng = np.random.default_rng(0)
  a, t = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
  assert evaluate.retrieval(a, t, caption_owner=np.arange(6)) == evaluate.retrieval(a, t)
  with pytest.raises(ValueError, match="caption_owner must give one clip index"):
    evaluate.retrieval(a, t, caption_owner=[0, 1])


def test_runlocal_demo_trains_on_a_built_corpus_and_runs_its_benchmark(tmp_path, capsys):
  """The runlocal demo trained on a built Clotho (``data=``: a corpus without tasks, so
  the end prints what ran instead of "mean nan%") with an ESC-50 benchmark evaluator in
  config.evals; ``python -m jaxclap.evaluate`` on the run gives the same ESC-50 numbers
  from its checkpoint, and both write the report folder."""
  import json
  from jaxclap import configs, train
  data = build_clotho(tmp_path / "c")
  esc = build_esc50(tmp_path / "e", confusable=False)
  capsys.readouterr()
  c = configs.load("demo", f"runlocal,steps=2,data={data}")
  c.checkpoint_every = 2
  c.evals.esc50 = dict(type="benchmark", benchmark="esc50", data=esc)
  workdir = str(tmp_path / "run")
  _, results = train.train_and_evaluate(c, workdir)
  out = capsys.readouterr().out
  assert "nan" not in out
  for name, kind in (("zero_shot", "binary"), ("multiclass", "multiclass"),
                     ("graded", "graded")):
    assert f"{name}: not run: the corpus declares no {kind} task (its tasks.json)" in out
  assert results["clips"] == {"test": 4} and "text_to_audio/R@1" in results["retrieval"]
  bench = results["esc50"]
  assert len(bench["multiclass"]["esc50"]["folds"]) == 5
  assert bench["multiclass"]["esc50"]["clips"] == 20
  report_md = evaluate.report_run(workdir, c, results)
  assert "the corpus declares: no tasks (evaluated by retrieval)" in open(report_md).read()
  files = set(os.listdir(os.path.join(workdir, "report")))
  assert {"results.json", "report.md", "training.png", "similarity.png",
          "bars_retrieval.png", "bars_esc50_multiclass.png",
          "confusion_esc50_multiclass_esc50.png"} <= files, files
  # The command line, on the run's checkpoint: the same model, the same numbers.
  assert evaluate.main(["--workdir", workdir, "--benchmark", "esc50", "--data", esc]) == 0
  assert "esc50 on" in capsys.readouterr().out
  with open(os.path.join(workdir, "report", "esc50", "results.json")) as f:
    cli = json.load(f)
  for task in ("esc50", "esc10"):
    assert cli["multiclass"][task]["folds"] == pytest.approx(
        bench["multiclass"][task]["folds"], abs=1e-6)
    assert cli["multiclass"][task]["confusion"] == bench["multiclass"][task]["confusion"]
  assert cli["linear_probe"]["esc50"]["accuracy"] == pytest.approx(
      bench["linear_probe"]["esc50"]["accuracy"], abs=1e-6)

"""`python -m jaxclap.prepare`: a manifest of real audio files round-trips into a corpus,
and every kind of bad input is skipped with a counted, logged reason (or raises, naming
the manifest line)."""

import json
import os

import numpy as np
import pytest
import soundfile as sf

from jaxclap import prepare
from jaxclap.corpus import records


def _tone(sr, seconds, freq=220.0, channels=1):
  t = np.arange(int(sr * seconds)) / sr
  x = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
  return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


@pytest.fixture()
def manifest(tmp_path):
  d = tmp_path / "audio"
  d.mkdir()
  sf.write(d / "a.wav", _tone(16000, 1.0), 16000, subtype="PCM_16")
  sf.write(d / "b.flac", _tone(44100, 1.5, 330, channels=2), 44100)     # stereo, 44.1 kHz
  sf.write(d / "c.ogg", _tone(22050, 1.2, 440), 22050, format="OGG")
  sf.write(d / "d.mp3", _tone(16000, 1.0, 550), 16000, format="MP3")
  sf.write(d / "long.wav", _tone(8000, 20.0), 8000)                     # used with start/end
  # Bad audio.
  sf.write(d / "empty.wav", np.zeros(0, np.float32), 16000)
  sf.write(d / "zeros.wav", np.zeros(16000, np.float32), 16000)
  nan = _tone(16000, 1.0)
  nan[100] = np.nan
  sf.write(d / "nan.wav", nan, 16000, subtype="FLOAT")
  sf.write(d / "toolong.wav", _tone(8000, 12.0), 8000)  # > max_seconds=10 (as hours long would be)
  (d / "garbage.wav").write_bytes(b"RIFF\x00\x00not really a wave file" * 10)
  good = [
      {"audio": "audio/a.wav", "captions": ["a low hum", "a steady tone"], "speaker": "s1"},
      {"audio": "audio/b.flac", "captions": "a stereo tone", "id": "bee"},
      {"audio": "audio/c.ogg", "captions": ["an ogg tone"], "fine_captions": ["it stays flat"]},
      {"audio": "audio/d.mp3", "captions": ["an mp3 tone"]},
      {"audio": os.path.join(str(d), "long.wav"), "captions": ["a segment"], "start": 2.0, "end": 5.0},
  ]
  bad = [
      {"audio": "audio/empty.wav", "captions": ["x"]},
      {"audio": "audio/zeros.wav", "captions": ["x"]},
      {"audio": "audio/nan.wav", "captions": ["x"]},
      {"audio": "audio/toolong.wav", "captions": ["x"]},
      {"audio": "audio/garbage.wav", "captions": ["x"]},
      {"audio": "audio/missing.wav", "captions": ["x"]},
      {"audio": "audio/a.wav", "captions": []},
      {"audio": "audio/a.wav", "captions": ["   "]},
      {"audio": "audio/a.wav", "captions": ["y" * 3000]},
      {"audio": "audio/a.wav", "captions": [17]},
      {"audio": "audio/a.wav", "captions": ["dup"], "id": "bee"},
      {"captions": ["no audio key"]},
  ]
  lines = [json.dumps(x).encode() for x in good[:2]] + [json.dumps(x).encode() for x in bad]
  lines += [b"{not json", b'{"audio": "audio/a.wav", "captions": ["caf\xe9"]}', b"[1, 2]"]
  lines += [json.dumps(x).encode() for x in good[2:]]
  path = tmp_path / "clips.jsonl"
  path.write_bytes(b"\n".join(lines) + b"\n")
  return path, good, len(bad) + 3


def _read_all(path, split="train"):
  src = records.open_split(path, split)
  return [records.decode(src[i]) for i in range(len(src))]


def test_round_trip_and_bad_input_report(manifest, tmp_path, capsys):
  path, good, n_bad = manifest
  rc = prepare.main(["--manifest", str(path), "--out", str(tmp_path / "out"),
                     "--max_seconds", "10", "--max_caption_chars", "1000"])
  assert rc == 0
  out = capsys.readouterr().out
  assert f"kept: {len(good)}, skipped: {n_bad}" in out
  got = sorted(_read_all(str(tmp_path / "out")), key=lambda r: r["metadata"]["audio"])
  assert [r["metadata"]["audio"] for r in got] == sorted(g["audio"] for g in good)
  by_audio = {r["metadata"]["audio"]: r for r in got}
  for g in good:
    r = by_audio[g["audio"]]
    assert r["sample_rate"] == 16000
    caps = g["captions"] if isinstance(g["captions"], list) else [g["captions"]]
    assert r["captions"] == caps
    assert r["fine_captions"] == g.get("fine_captions", [])
  # Audio content survives: duration and the tone's frequency (via the spectrum peak).
  expect = {"audio/a.wav": (1.0, 220), "audio/b.flac": (1.5, 330), "audio/c.ogg": (1.2, 440),
            "audio/d.mp3": (1.0, 550)}
  for name, (secs, freq) in expect.items():
    a = by_audio[name]["audio"]
    assert abs(len(a) / 16000 - secs) < 0.06, name    # mp3 adds encoder padding
    peak = np.argmax(np.abs(np.fft.rfft(a))) * 16000 / len(a)
    assert abs(peak - freq) < 3, name
  seg = by_audio[good[4]["audio"]]
  assert len(seg["audio"]) == 3 * 16000 and seg["metadata"]["original_sample_rate"] == 8000
  assert by_audio["audio/b.flac"]["id"] == "bee"
  assert by_audio["audio/a.wav"]["metadata"]["speaker"] == "s1"
  # Stereo was averaged: 0.5*(x + 0.5x) = 0.75x of amplitude 0.5.
  assert abs(np.max(np.abs(by_audio["audio/b.flac"]["audio"])) - 0.375) < 0.01


@pytest.mark.parametrize("line, message", [
    ({"audio": "audio/empty.wav", "captions": ["x"]}, "audio is empty"),
    ({"audio": "audio/zeros.wav", "captions": ["x"]}, "all zeros"),
    ({"audio": "audio/nan.wav", "captions": ["x"]}, "NaN/Inf"),
    ({"audio": "audio/toolong.wav", "captions": ["x"]}, "longer than max_seconds=10"),
    ({"audio": "audio/garbage.wav", "captions": ["x"]}, "cannot decode audio"),
    ({"audio": "audio/missing.wav", "captions": ["x"]}, "audio file not found"),
    ({"audio": "audio/a.wav", "captions": []}, "captions is empty"),
    ({"audio": "audio/a.wav", "captions": ["  "]}, "captions[0] is empty"),
    ({"audio": "audio/a.wav", "captions": ["y" * 3000]}, "3000 characters"),
    ({"audio": "audio/a.wav", "captions": [17]}, "captions[0] is int"),
    ({"captions": ["x"]}, "no 'audio' key"),
    (b"{not json", "not JSON"),
    (b'{"audio": "audio/a.wav", "captions": ["caf\xe9"]}', "not valid UTF-8"),
])
def test_on_error_raise_names_the_line(manifest, tmp_path, line, message):
  path, _, _ = manifest
  bad = tmp_path / "bad.jsonl"
  first = json.dumps({"audio": "audio/a.wav", "captions": ["fine"]}).encode()
  bad.write_bytes(first + b"\n" + (line if isinstance(line, bytes) else json.dumps(line).encode()))
  with pytest.raises(records.BadRecord) as e:
    prepare.prepare({"train": str(bad)}, str(tmp_path / "o"), "bad", max_seconds=10,
                    max_caption_chars=1000, on_error="raise")
  assert f"{bad}:2" in str(e.value) and message in str(e.value)


def test_splits_and_existing_output(manifest, tmp_path):
  path, good, _ = manifest
  out = str(tmp_path / "o")
  p, _ = prepare.prepare({"train": str(path), "test": str(path)}, out, "two", max_seconds=10,
                         max_caption_chars=1000)
  assert len(_read_all(p, "train")) == len(good) == len(_read_all(p, "test"))
  with pytest.raises(FileExistsError, match="--overwrite"):
    prepare.prepare({"train": str(path)}, out, "two")
  assert prepare.main(["--manifest", str(tmp_path / "nope.jsonl"), "--out", out]) == 2


# ---------------------------------------------------------------- declared tasks

_TASKS = {
    "binary": {"calm": {"key": "mood", "positive": ["calm"], "negative": ["angry", "tense"],
                        "positive_prompt": "A calm voice.",
                        "negative_prompt": ["An angry voice.", "A tense voice."]}},
    "multiclass": {"speaker": {"key": "speaker", "classes": ["s1", "s2"],
                               "prompts": ["Speaker one.", ["Speaker two.", "The other one."]]}},
    "graded": {"age": {"key": "age", "prompt": "An old person speaking.",
                       "exclude": [["mood", "varies"]]}},
}


def test_tasks_file_is_declared_beside_the_splits(manifest, tmp_path):
  path, _, _ = manifest
  tasks = tmp_path / "tasks.json"
  tasks.write_text(json.dumps(_TASKS))
  out = str(tmp_path / "o")
  assert prepare.main(["--manifest", str(path), "--out", out, "--name", "with_tasks",
                       "--max_seconds", "10", "--tasks", str(tasks)]) == 0
  got = records.read_tasks(os.path.join(out, "with_tasks", "1.0.0"))
  assert got == {
      "binary": {"calm": records.BinaryTask("mood", ("calm",), ("angry", "tense"), "A calm voice.",
                                            ("An angry voice.", "A tense voice."))},
      "multiclass": {"speaker": records.MultiClassTask(
          "speaker", ("s1", "s2"), ("Speaker one.", ("Speaker two.", "The other one.")))},
      "graded": {"age": records.GradedTask("age", "An old person speaking.", None,
                                           (("mood", "varies"),))},
  }
  assert records.read_tasks(out) == got   # a folder holding the one dataset, as open_split
  p, _ = prepare.prepare({"train": str(path)}, out, "no_tasks", max_seconds=10)
  assert records.read_tasks(p) == {"binary": {}, "multiclass": {}, "graded": {}}


def _bad(kind, name, **change):
  spec = dict(_TASKS[kind][name], **change)
  return {kind: {name: {k: v for k, v in spec.items() if v is not None}}}


@pytest.mark.parametrize("tasks, names", [
    (_bad("binary", "calm", negative_prompt=None), ("binary.calm", "negative_prompt")),
    (_bad("binary", "calm", positive="calm"), ("binary.calm.positive",)),
    (_bad("binary", "calm", positive_prompt=""), ("binary.calm.positive_prompt",)),
    (_bad("binary", "calm", colour="red"), ("binary.calm", "colour")),
    (_bad("multiclass", "speaker", prompts=["Speaker one."]),
     ("multiclass.speaker.prompts", "1 prompts for 2 classes")),
    (_bad("graded", "age", exclude=[["mood"]]), ("graded.age.exclude[0]",)),
    ({"regression": {}}, ("regression",)),
    ({"binary": ["calm"]}, ("binary",)),
    ({"format": 2}, ("format 2",)),
])
def test_malformed_tasks_file_names_the_file_and_key(manifest, tmp_path, capsys, tasks, names):
  path, _, _ = manifest
  file = tmp_path / "bad_tasks.json"
  file.write_text(json.dumps(tasks))
  out = tmp_path / "o"
  assert prepare.main(["--manifest", str(path), "--out", str(out), "--tasks", str(file)]) == 2
  err = capsys.readouterr().err
  assert str(file) in err and all(n in err for n in names), err
  assert not out.exists()   # checked before any audio is read


def test_tasks_file_that_is_not_json_is_named(manifest, tmp_path):
  path, _, _ = manifest
  file = tmp_path / "bad_tasks.json"
  file.write_text("{not json")
  with pytest.raises(ValueError, match=f"{file}: not JSON"):
    prepare.prepare({"train": str(path)}, str(tmp_path / "o"), "bad", tasks=str(file))
  with pytest.raises(FileNotFoundError, match="--tasks"):
    prepare.prepare({"train": str(path)}, str(tmp_path / "o"), "bad",
                    tasks=str(tmp_path / "none.json"))


def test_defaults_are_trainings():
  """A corpus prepared with the defaults is one training reads: the caption limit and
  sample rate come from the training config, not a copy of its numbers."""
  from jaxclap import configs
  train = configs.base({}).input
  args = prepare._parser().parse_args(["--manifest", "m.jsonl", "--out", "o"])
  assert args.max_caption_chars == train.max_caption_chars
  assert args.sample_rate == train.sample_rate
  import inspect
  defaults = inspect.signature(prepare.prepare).parameters
  assert defaults["max_caption_chars"].default == train.max_caption_chars
  assert defaults["sample_rate"].default == train.sample_rate


def test_caption_training_refuses_is_refused_by_default(manifest, tmp_path):
  """The drift this closes: prepare accepted 2,000-character captions training refused."""
  from jaxclap import configs
  limit = configs.base({}).input.max_caption_chars
  bad = tmp_path / "long.jsonl"
  bad.write_text(json.dumps({"audio": "audio/a.wav", "captions": ["y" * (limit + 1)]}))
  with pytest.raises(records.BadRecord, match=f"more than max_chars={limit}"):
    prepare.prepare({"train": str(bad)}, str(tmp_path / "o"), "long", on_error="raise")


def test_beam_without_apache_beam_says_what_to_install(monkeypatch, capsys):
  import sys
  monkeypatch.setitem(sys.modules, "apache_beam", None)   # as if not installed
  with pytest.raises(SystemExit):
    prepare.main(["--manifest", "m.jsonl", "--out", "o", "--beam"])
  assert "pip install 'jaxclap[beam]'" in capsys.readouterr().err

"""The README's fuzz table, rows for bad data, configs and export paths: each case gets a
clear error naming the file, line, key or argument, or a counted, logged skip, and
nothing else is lost. (Inference inputs: tests/test_bad_inputs.py; checkpoints and runs:
tests/test_reliability.py.)"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from jaxclap import configs, prepare
from jaxclap.corpus import records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tone(sr, seconds, channels=1):
  x = (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(sr * seconds)) / sr)).astype(np.float32)
  return np.tile(x[:, None], (1, channels)) if channels > 1 else x


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("fuzz")
  a = d / "a"
  a.mkdir()
  sf.write(a / "ok.wav", _tone(16000, 1.0), 16000, subtype="PCM_16")
  whole = (a / "ok.wav").read_bytes()
  (a / "truncated.wav").write_bytes(whole[:len(whole) // 2])   # header says 1 s
  (a / "zero.wav").write_bytes(b"")
  (a / "text.wav").write_text("not audio at all\n" * 20)
  sf.write(a / "one.wav", np.array([0.5], np.float32), 16000)
  sf.write(a / "eight.wav", _tone(16000, 1.0, channels=8), 16000)
  sf.write(a / "hi.wav", _tone(96000, 1.0), 96000)
  sf.write(a / "long.wav", _tone(1000, 30.0), 1000)           # > max_seconds=20 below
  sf.write(a / "silent.wav", np.zeros(16000, np.float32), 16000)
  nan = _tone(16000, 1.0)
  nan[7] = np.inf
  sf.write(a / "inf.wav", nan, 16000, subtype="FLOAT")
  (a / "dir.wav").mkdir()
  os.symlink("loop.wav", a / "loop.wav")
  (a / "ü folder").mkdir()
  sf.write(a / "ü folder" / "clip ñ 1.wav", _tone(16000, 1.0), 16000)
  return d


def _run(files, lines, **kw):
  """prepare.examples over a manifest of ``lines``: (kept records, skip counter)."""
  path = files / f"m{abs(hash(json.dumps(lines, default=str))) % 10**8}.jsonl"
  path.write_bytes(b"\n".join(l if isinstance(l, bytes) else json.dumps(l).encode()
                              for l in lines) + b"\n")
  skips = records.SkipCounter("clip")
  kept = [r for _, r in prepare.examples(str(path), "train", sample_rate=16000,
                                          max_seconds=20.0, max_caption_chars=1000,
                                          skips=skips, **kw)]
  return kept, skips


# (case, manifest line, the skip reason the user reads in the log and the report)
SKIPPED = [
    ("truncated WAV", {"audio": "a/truncated.wav", "captions": ["x"]},
     "WAV file is truncated: its header declares 32000 bytes"),
    ("0-byte file", {"audio": "a/zero.wav", "captions": ["x"]}, "audio file is empty (0 bytes)"),
    ("text renamed .wav", {"audio": "a/text.wav", "captions": ["x"]}, "cannot decode audio"),
    ("1-sample file", {"audio": "a/one.wav", "captions": ["x"]}, "shorter than min_seconds"),
    ("hours long (from the header)", {"audio": "a/long.wav", "captions": ["x"]},
     "30.0 s long, longer than max_seconds=20"),
    ("NaN/Inf samples", {"audio": "a/inf.wav", "captions": ["x"]}, "NaN/Inf"),
    ("silent", {"audio": "a/silent.wav", "captions": ["x"]}, "all zeros"),
    ("missing file", {"audio": "a/nope.wav", "captions": ["x"]}, "audio file not found"),
    ("a directory", {"audio": "a/dir.wav", "captions": ["x"]},
     "audio path is a directory, not a file"),
    ("symlink loop", {"audio": "a/loop.wav", "captions": ["x"]}, "audio path is a broken symlink"),
    ("empty caption", {"audio": "a/ok.wav", "captions": [""]}, "captions[0] is empty"),
    ("100k-character caption", {"audio": "a/ok.wav", "captions": ["y" * 100_000]},
     "captions[0] has 100000 characters, more than max_chars=1000"),
    ("non-UTF-8 caption", b'{"audio": "a/ok.wav", "captions": ["caf\xe9"]}', "not valid UTF-8"),
    ("manifest line not JSON", b"{'audio': 'a/ok.wav'}", "line is not JSON"),
]


@pytest.mark.parametrize("case, line, reason", SKIPPED, ids=[c for c, _, _ in SKIPPED])
def test_bad_records_are_skipped_counted_and_named(files, case, line, reason, caplog):
  kept, skips = _run(files, [{"audio": "a/ok.wav", "captions": ["good"]}, line])
  assert len(kept) == 1 and skips.skipped == 1, case     # the good line is kept
  assert reason in caplog.text and ":2" in caplog.text, caplog.text   # logged with its line
  assert skips.summary().startswith("clips kept: 1, skipped: 1")


def test_odd_but_valid_records_are_kept(files):
  caps = [f"caption {i}" for i in range(10_000)]
  kept, skips = _run(files, [
      {"audio": "a/eight.wav", "captions": ["eight channels"]},
      {"audio": "a/hi.wav", "captions": ["96 kHz"]},
      {"audio": "a/ü folder/clip ñ 1.wav", "captions": ["unicode and spaces in the path"]},
      {"audio": "a/ok.wav", "captions": ["😀🎵"]},
      {"audio": "a/ok.wav", "captions": caps},
  ])
  assert skips.skipped == 0 and len(kept) == 5
  for r in kept[:3]:   # mono at 16 kHz, one second
    assert r["audio"].ndim == 1 and len(r["audio"]) == 16000 and r["sample_rate"] == 16000
  assert json.loads(kept[1]["metadata"])["original_sample_rate"] == 96000
  assert kept[3]["captions"] == ["😀🎵"] and kept[4]["captions"] == caps


def test_duplicate_ids_are_skipped_naming_the_first_line(files, caplog):
  kept, skips = _run(files, [{"audio": "a/ok.wav", "captions": ["x"], "id": "k"},
                             {"audio": "a/ok.wav", "captions": ["y"], "id": "k"}])
  assert len(kept) == 1 and skips.skipped == 1
  assert "id 'k' already used on line 1" in caplog.text


# ------------------------------------------------------------------------------ configs

@pytest.mark.parametrize("arg, message", [
    ("steps=abc", r"configs/demo.py: steps='abc' is not a number \(int\)"),
    ("steps=0", r"steps=0 must be > 0"),
    ("batch=4.5", r"batch='4.5' is not a number \(int\)"),
    ("runlocal=yes", r"runlocal is a flag and takes no value"),
    ("audio=resnet", r"audio='resnet'; use one of \['vit', 'cnn14', 'htsat', 'zipformer'\]"),
    ("stepz=3", r"unknown argument\(s\) \['stepz'\]"),
])
def test_config_arguments_name_the_argument(arg, message):
  with pytest.raises(ValueError, match=message):
    configs.load("configs/demo.py", arg)
  assert configs.load("configs/demo.py", "steps=7,batch=4,scale=0.5").total_steps == 7


def test_overrides_with_an_unknown_key_or_wrong_type_are_named(tmp_path):
  """config_flags refuses both before anything runs, naming the key."""
  def main(*flags):
    return subprocess.run([sys.executable, "-m", "jaxclap.main",
                           "--config=configs/demo.py:runlocal", f"--workdir={tmp_path}", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  typo = main("--config.optim.lrr=1e-3")
  assert typo.returncode != 0 and "lrr" in typo.stderr and "did you mean" in typo.stderr.lower()
  wrong = main("--config.total_steps=abc")
  assert wrong.returncode != 0 and "total_steps" in wrong.stderr
  assert not os.listdir(tmp_path)   # nothing written


# ------------------------------------------------------------------------------- export

def test_export_refuses_an_out_path_that_is_a_file_or_a_foreign_folder(tmp_path):
  from jaxclap import export
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "config.json").write_text("{}")
  taken = tmp_path / "taken.txt"
  taken.write_text("keep me")
  with pytest.raises(FileExistsError, match="is a file"):
    export.export(str(tmp_path / "run"), str(taken))
  other = tmp_path / "photos"
  other.mkdir()
  (other / "x.jpg").write_text("keep me")
  with pytest.raises(FileExistsError, match="holding other files"):
    export.export(str(tmp_path / "run"), str(other))
  assert taken.read_text() == "keep me" and os.listdir(other) == ["x.jpg"]
  res = subprocess.run([sys.executable, "-m", "jaxclap.export", f"--workdir={tmp_path}/run",
                        f"--out={taken}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert res.returncode == 2 and "is a file" in res.stderr and "Traceback" not in res.stderr


def test_a_batch_that_does_not_split_over_the_devices_is_refused_up_front():
  """3 devices, global batch 8: named before anything compiles (was an IndivisibleError
  deep in jax after the set-up)."""
  from cpu_devices import run_on_cpu_devices
  got = run_on_cpu_devices(__file__, count=3, timeout=300)
  assert got["error"].startswith("global_batch_size=8 does not split over the 3 devices"), got
  assert "use a multiple of 3" in got["error"]


def test_a_mesh_that_does_not_match_the_devices_names_both_numbers():
  from jaxclap import sharding
  with pytest.raises(ValueError, match=r"config.mesh \{'data': 4, 'fsdp': 4, 'tensor': 1\} "
                                       r"needs 16 devices; there are 8"):
    sharding.mesh_shape({"data": 4, "fsdp": 4, "tensor": 1}, 8)
  with pytest.raises(ValueError, match="8 devices are not divisible by 3"):
    sharding.mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 8)


if __name__ == "__main__":
  import jax
  from jaxclap import sharding, train
  c = configs.load("configs/demo.py", "runlocal")
  c.mesh.data = -1
  try:
    train.Trainer(c, sharding.make_mesh(c.mesh))
    out = {"error": None, "devices": jax.device_count()}
  except ValueError as e:
    out = {"error": str(e), "devices": jax.device_count()}
  print(json.dumps(out))

"""Preparation on Apache Beam (jaxclap.prepare_beam): a manifest of generated clips
prepared on DirectRunner with 2 worker processes is the single-process corpus record for
record, and an interrupted run resumes without redoing its finished shards."""

import json
import os

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("apache_beam", reason="apache-beam is the 'beam' extra (pip install "
                    "'jaxclap[beam]'); it is not in the test extra because it pins "
                    "protobuf<7 (see pyproject.toml)")

from jaxclap import clip_reader, prepare, prepare_beam  # noqa: E402
from jaxclap.corpus import records  # noqa: E402

N = 150


def _manifest(tmp_path, n=N):
  """``n`` short clips at three sample rates (so resampling runs), a few bad ones."""
  rng = np.random.default_rng(0)
  d = tmp_path / "audio"
  d.mkdir()
  lines = []
  for i in range(n):
    sr = (16000, 22050, 44100)[i % 3]
    t = np.arange(int(sr * rng.uniform(0.2, 0.6))) / sr
    x = (0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)
         + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    if i % 37 == 5:
      x[:] = 0.0                                        # silent: a counted skip
    name = f"c{i:04d}.{'flac' if i % 2 else 'wav'}"
    sf.write(d / name, x, sr)
    lines.append({"audio": f"audio/{name}", "captions": [f"clip {i}", f"tone {i % 7}"],
                  "speaker": f"s{i % 5}"})
  lines.insert(40, {"audio": "audio/missing.wav", "captions": ["gone"]})
  lines.insert(90, {"audio": "audio/c0001.flac", "captions": []})      # listing-time skip
  path = tmp_path / "clips.jsonl"
  path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
  return path


def _read(path, split="train"):
  src = records.open_split(path, split)
  return [records.decode(src[i]) for i in range(len(src))]


def _same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x["id"] == y["id"] and x["captions"] == y["captions"]
    assert x["metadata"] == y["metadata"] and x["sample_rate"] == y["sample_rate"]
    np.testing.assert_array_equal(x["audio"], y["audio"])


def test_two_workers_write_the_single_process_records(tmp_path, capsys):
  """~25 s on 2 cores, most of it the two worker processes importing tfds."""
  path = _manifest(tmp_path)
  one = tmp_path / "one"
  two = tmp_path / "two"
  assert prepare.main(["--manifest", str(path), "--out", str(one), "--name", "c"]) == 0
  report_one = capsys.readouterr().out
  assert prepare.main(["--manifest", str(path), "--out", str(two), "--name", "c", "--beam",
                       "--shard_clips=16", "--direct_num_workers=2",
                       "--direct_running_mode=multi_processing"]) == 0
  report_two = capsys.readouterr().out
  a, b = _read(str(one / "c" / "1.0.0")), _read(str(two / "c" / "1.0.0"))
  n_silent = len([i for i in range(N) if i % 37 == 5])
  assert len(a) == N - n_silent
  _same(a, b)
  # The same kept / skipped report (the 'wrote' line names another folder).
  report = lambda out: out[out.index("train clips"):out.index("wrote")]   # after tfds' lines
  assert report(report_one) == report(report_two)
  assert f"kept: {N - n_silent}, skipped: {n_silent + 2}" in report_two
  files = sorted(os.listdir(two / "c" / "1.0.0"))
  assert sum(f.startswith("c-train.array_record-") for f in files) == 10   # 150/16 shards
  assert not os.path.exists(two / "c" / "1.0.0.beam-incomplete")


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, monkeypatch):
  """In-process DirectRunner (so decode can be watched); ~3 s."""
  path = _manifest(tmp_path, n=60)
  items = {"train": prepare.list_manifest(str(path), "train", max_caption_chars=1000,
                                          skips=records.SkipCounter("clip"))}
  opts = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
  kw = dict(sample_rate=16000, max_seconds=60.0, description="t", shard_clips=8)
  decoded = []
  real = clip_reader.decode
  monkeypatch.setattr(clip_reader, "decode", lambda item, **k: decoded.append(item.id) or
                      real(item, **k))
  # A first run dies after its workers wrote every shard, before the dataset is finished;
  # then two shards are lost, as a preempted worker's would be.
  import tensorflow_datasets as tfds

  def died(**k):
    raise RuntimeError("driver preempted")

  with monkeypatch.context() as m:
    m.setattr(tfds.folder_dataset, "write_metadata", died)
    with pytest.raises(RuntimeError, match="preempted"):
      prepare_beam.write("c", items, str(tmp_path / "o"), {"train": records.SkipCounter("c")},
                         beam_args=opts, **kw)
  assert len(decoded) == len(items["train"])
  staging = tmp_path / "o" / "c" / "1.0.0.beam-incomplete"
  for k in (2, 5):
    os.remove(staging / f"train-{k:05d}.json")
  decoded.clear()
  counter = records.SkipCounter("c")
  out = prepare_beam.write("c", items, str(tmp_path / "o"), {"train": counter},
                           beam_args=opts, **kw)
  assert sorted(decoded) == sorted(i.id for i in items["train"][16:24] + items["train"][40:48])
  assert counter.kept == len(_read(out)) and counter.kept + counter.skipped == len(items["train"])
  ref = tmp_path / "ref"
  ref_path, _ = prepare.prepare({"train": str(path)}, str(ref), "c", max_caption_chars=1000)
  _same(_read(ref_path), _read(out))
  # A different listing over the unfinished staging folder is refused.
  (tmp_path / "o2" / "c" / "1.0.0.beam-incomplete").mkdir(parents=True)
  (tmp_path / "o2" / "c" / "1.0.0.beam-incomplete" / "plan.json").write_text('{"fingerprint": "x"}')
  with pytest.raises(ValueError, match="another listing"):
    prepare_beam.write("c", items, str(tmp_path / "o2"), {"train": records.SkipCounter("c")},
                       beam_args=opts, **kw)


def test_beam_flags_need_beam(capsys):
  with pytest.raises(SystemExit):
    prepare.main(["--manifest", "m.jsonl", "--out", "o", "--runner=DirectRunner"])
  assert "need --beam" in capsys.readouterr().err


@pytest.mark.parametrize("given, want", [
    ([], {"direct_running_mode": "multi_processing", "direct_num_workers": os.cpu_count()}),
    (["--direct_num_workers", "3"], {"direct_running_mode": "multi_processing",
                                     "direct_num_workers": 3}),
    (["--direct_running_mode=in_memory"], {"direct_running_mode": "in_memory"}),
    (["--runner", "DataflowRunner"], {"runner": "DataflowRunner"}),
])
def test_pipeline_options_default_to_a_worker_per_core_on_direct_runner(given, want):
  got = prepare_beam.pipeline_options(given).get_all_options()
  assert {k: got[k] for k in want} == want and got["default_sdk_harness_log_level"] == "WARNING"
  if "runner" in want:   # another runner's workers are the runner's business
    assert got["direct_running_mode"] == "in_memory" and got["direct_num_workers"] == 1

"""Preparation throughput: the single process against Apache Beam (DirectRunner, N worker
processes) on one generated manifest, in one run, with the ISA and the load beside it.

  python benchmarks/prepare_beam.py [--clips 400] [--seconds 5] [--workers 2]

The clips are ESC-50-like: mono, 44.1 kHz, 16-bit (FLAC by default), resampled to
training's 16 kHz. Both paths
write the same records (tests/test_prepare_beam.py checks that); this times them. Beam's
figure includes its start-up (worker processes importing tfds), as a user's run would.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import isa  # noqa: E402
from jaxclap import prepare  # noqa: E402


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--clips", type=int, default=2000)
  p.add_argument("--seconds", type=float, default=5.0)
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--shard_clips", type=int, default=50)
  p.add_argument("--format", choices=("wav", "flac"), default="flac",
                 help="the clips' container (FLAC: decoding costs CPU, as for most corpora)")
  a = p.parse_args()
  with tempfile.TemporaryDirectory() as d:
    rng = np.random.default_rng(0)
    os.mkdir(os.path.join(d, "audio"))
    lines = []
    for i in range(a.clips):
      x = (0.1 * rng.standard_normal(int(44100 * a.seconds))).astype(np.float32)
      sf.write(os.path.join(d, "audio", f"{i}.{a.format}"), x, 44100, subtype="PCM_16")
      lines.append(json.dumps({"audio": f"audio/{i}.{a.format}", "captions": [f"clip {i}"]}))
    manifest = os.path.join(d, "clips.jsonl")
    with open(manifest, "w") as f:
      f.write("\n".join(lines) + "\n")
    # Beam's fixed cost (start the workers, import, finish): a run of one shard per worker.
    small = os.path.join(d, "small.jsonl")
    with open(small, "w") as f:
      f.write("\n".join(lines[:a.workers]) + "\n")
    beam = dict(beam_args=[f"--direct_num_workers={a.workers}",
                           "--direct_running_mode=multi_processing"])

    def timed(label, path, n, **kw):
      t = time.perf_counter()
      _, counters = prepare.prepare({"train": path}, os.path.join(d, label), "bench", **kw)
      assert counters["train"].kept == n, counters["train"].summary()
      return time.perf_counter() - t

    times = {"single process": timed("single", manifest, a.clips),
             f"beam, {a.workers} workers": timed("beam", manifest, a.clips,
                                                 shard_clips=a.shard_clips, **beam)}
    start = timed("startup", small, a.workers, shard_clips=1, **beam)   # imports warm
    for label, dt in times.items():
      print(f"{label:>20s}: {a.clips} clips ({a.clips * a.seconds / 60:.0f} min of audio) in "
            f"{dt:.1f} s = {a.clips / dt:.1f} clips/s")
    one, two = times.values()
    past = f"{a.clips / (two - start):.1f} clips/s" if two > start else "n/a"
    print(f"speed-up {one / two:.2f}x; Beam's fixed cost (a {a.workers}-clip run) {start:.1f} s, "
          f"{past} past it; load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {isa.describe()}")


if __name__ == "__main__":
  main()

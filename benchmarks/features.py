"""How fast jaxclap.audio computes features on the JAX default device, against the host libraries.

  python benchmarks/features.py [--batch 64] [--seconds 10] [--repeats 5]

Measures, in one run and on one random batch of [batch, seconds * sr] float32 clips:
  log-mel   melspectrogram + power_to_db with SLAP's parameters (16 kHz, n_fft 512,
            win 400, hop 160, 128 mel) vs librosa on the same [batch, T] array
  fbank     Kaldi fbank (16 kHz, 25/10 ms, hanning) vs kaldi-native-fbank looped over
            the clips. 80 bins for both: kaldi-native-fbank refuses AudioMAE's 128 bins
            over a 512-point FFT (one bin is narrower than an FFT bin); the bin count
            barely changes the cost.
  resample  44.1 kHz -> 16 kHz, res_type "fft" and "polyphase", each vs librosa with the
            same res_type and vs librosa's default soxr_hq
JAX timings are of the jitted function on a batch already on the device (compiled and
warmed up first, block_until_ready). JAX and host runs alternate, so that load from
other processes on a shared machine hits both alike; each figure is the median of
--repeats runs. speedup = host time / JAX time; the target is >= 1 on a CPU, >= 20 on
a GPU.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxclap import audio  # noqa: E402

SLAP = dict(sr=16000, n_fft=512, win_length=400, hop_length=160, n_mels=128)
FBANK = dict(sample_frequency=16000.0, num_mel_bins=80, window_type="hanning")


def _compare(name, jax_fn, x_dev, hosts, repeats):
  """Times jax_fn(x_dev) against each (label, host_fn), alternating runs; prints a line each."""
  t = time.perf_counter()
  jax_fn(x_dev).block_until_ready()  # compile + first run
  compile_s = time.perf_counter() - t
  jax_fn(x_dev).block_until_ready()
  for _, host_fn in hosts:
    host_fn()  # warm-up: librosa's lazy imports and caches
  jax_times, host_times = [], [[] for _ in hosts]
  for _ in range(repeats):
    t = time.perf_counter()
    jax_fn(x_dev).block_until_ready()
    jax_times.append(time.perf_counter() - t)
    for times, (_, host_fn) in zip(host_times, hosts):
      t = time.perf_counter()
      host_fn()
      times.append(time.perf_counter() - t)
  jax_s = statistics.median(jax_times)
  for (label, _), times in zip(hosts, host_times):
    host_s = statistics.median(times)
    print(f"{name:<30} jax {jax_s * 1e3:8.1f} ms | {label:<26} {host_s * 1e3:8.1f} ms | "
          f"speedup {host_s / jax_s:6.1f}x  (compile {compile_s:.1f} s)", flush=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=64, help="clips per batch (default 64)")
  parser.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10)")
  parser.add_argument("--repeats", type=int, default=5, help="timed runs of each (default 5)")
  args = parser.parse_args(argv)

  import kaldi_native_fbank as knf
  import librosa

  dev = jax.devices()[0]
  print(f"JAX {jax.__version__} on {dev.platform}: {dev.device_kind} "
        f"({jax.device_count()} device(s)); host CPUs: {os.cpu_count()}")
  print(f"batch {args.batch} x {args.seconds:g} s; medians of {args.repeats} alternating runs")

  rng = np.random.default_rng(0)
  n16 = int(round(args.seconds * 16000))
  x16 = (0.1 * rng.standard_normal((args.batch, n16))).astype(np.float32)
  x16_dev = jax.device_put(x16)

  logmel = jax.jit(lambda y: audio.power_to_db(audio.melspectrogram(y, **SLAP)))
  _compare("log-mel (SLAP)", logmel, x16_dev, [
      ("librosa", lambda: librosa.power_to_db(librosa.feature.melspectrogram(y=x16, **SLAP))),
  ], args.repeats)

  opts = knf.FbankOptions()
  opts.frame_opts.dither = 0.0
  opts.frame_opts.window_type = FBANK["window_type"]
  opts.mel_opts.num_bins = FBANK["num_mel_bins"]

  def kaldi_loop():
    out = []
    for clip in x16:
      f = knf.OnlineFbank(opts)
      f.accept_waveform(16000.0, clip)
      f.input_finished()
      out.append(np.stack([f.get_frame(i) for i in range(f.num_frames_ready)]))
    return out

  _compare("fbank (80 bins)", jax.jit(functools.partial(audio.fbank, **FBANK)), x16_dev,
           [("kaldi-native-fbank loop", kaldi_loop)], args.repeats)

  n44 = int(round(args.seconds * 44100))
  x44 = (0.1 * rng.standard_normal((args.batch, n44))).astype(np.float32)
  x44_dev = jax.device_put(x44)
  for res_type in ("fft", "polyphase"):
    rs = jax.jit(functools.partial(audio.resample, orig_sr=44100, target_sr=16000,
                                   res_type=res_type))
    _compare(f"resample 44.1k->16k {res_type}", rs, x44_dev, [
        ("librosa soxr_hq", lambda: librosa.resample(x44, orig_sr=44100, target_sr=16000)),
        (f"librosa {res_type}",
         lambda: librosa.resample(x44, orig_sr=44100, target_sr=16000, res_type=res_type)),
    ], args.repeats)


if __name__ == "__main__":
  main()

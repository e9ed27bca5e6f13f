"""Parity of jaxclap.audio (float32, jitted) with the references the recipes were trained on.

References are computed in float64 where the library allows it (librosa, scipy), from
float32 input otherwise (kaldi-native-fbank computes in float32 itself). Signals are two
seeded chirps plus white noise, peak near 1, at odd and even lengths, run as a batch and
compared clip by clip with the reference on that clip alone.

Tolerances (measured maxima on this suite in brackets):
  resample "fft"/"polyphase" vs librosa of the same res_type: max abs 1e-5   [8e-7]
  resample vs librosa's default soxr_hq, band-limited (<= 0.8 Nyquist) multi-sine,
    middle 80% of the clip:  fft 2e-4 [7e-5], polyphase 3e-3 [1e-3]
    (different filters: only the pass band agrees, and the ends ring differently)
  melspectrogram power: relative 1e-4 where power > 1e-6 x clip max    [4e-5]
  power_to_db(ref="max", top_db=80): abs 2e-3 dB                       [2e-4]
  fbank (natural-log energies) vs kaldi-native-fbank (float32 itself) or a float64
    numpy Kaldi fbank, by how far the band lies below its frame's peak band:
    within 10 (43 dB): abs 5e-4 [2.2e-4]; within 18 (78 dB): abs 2e-3 [7e-4];
    anywhere: abs 1e-2 [3.5e-3: float32 FFT roundoff, e.g. in the low bands that
    preemphasis attenuates]
The whole module takes ~28 s of CPU time (most of it single-threaded) on 2 cores.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import kaldi_native_fbank as knf
import librosa
import numpy as np
import pytest
import scipy.signal

from jaxclap import audio

# The five recipes' front ends (SLAP and AudioMAE share 16 kHz / 128 mel / 25 ms / 10 ms).
SLAP = dict(sr=16000, n_fft=512, win_length=400, hop_length=160, n_mels=128)
CLAP = dict(sr=44100, n_fft=1024, hop_length=320, n_mels=64, fmin=50, fmax=8000)
HTSAT = dict(sr=48000, n_fft=1024, hop_length=480, n_mels=64, fmin=50, fmax=14000)
# AcuLa's audio tower is OPERA-CT; OPERA's pre_process_audio_mel_t uses n_fft=1024,
# hop=512, fmin=50 and, on the path that feeds the encoder, fmax=8000.
ACULA = dict(sr=16000, n_fft=1024, hop_length=512, n_mels=64, fmin=50, fmax=8000)
RECIPES = {"slap_audiomae": SLAP, "clap": CLAP, "htsat_laion": HTSAT, "acula_opera": ACULA}

MEL_RTOL = 1e-4
DB_ATOL = 2e-3
RESAMPLE_ATOL = 1e-5
# (natural-log units below the frame's peak band, abs tolerance), loosest last.
FBANK_ATOL = ((10.0, 5e-4), (18.0, 2e-3), (np.inf, 1e-2))


def _signal(n: int, sr: float, seed: int) -> np.ndarray:
  """Two linear chirps across the band plus noise: every mel band has energy."""
  rng = np.random.default_rng(seed)
  t = np.arange(n) / sr
  dur = max(t[-1], 1e-3)
  f0, f1 = rng.uniform(40, 400), rng.uniform(0.3, 0.48) * sr
  up = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * dur)))
  down = np.sin(2 * np.pi * (f1 * 0.7 * t - (f1 * 0.7 - f0) * t ** 2 / (2 * dur)) + 1.0)
  return 0.55 * up + 0.3 * down + 0.05 * rng.standard_normal(n)


def _batch(lengths, sr, seed=0):
  """Clips of the given lengths, zero-padded into one [B, max] batch."""
  clips = [_signal(n, sr, seed + i) for i, n in enumerate(lengths)]
  batch = np.zeros((len(clips), max(lengths)))
  for i, c in enumerate(clips):
    batch[i, :len(c)] = c
  return clips, batch


def _jit(fn, **kw):
  """fn with its scalar parameters bound, jitted (eager op-by-op dispatch is slow)."""
  return jax.jit(functools.partial(fn, **kw))


def _librosa_mel(y, **kw):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # n_fft larger than a short clip
    return librosa.feature.melspectrogram(y=y, **kw)


# ----------------------------------------------------------------------------- resample


RATES = [(22050, 16000), (44100, 16000), (48000, 16000), (16000, 48000)]


@pytest.mark.parametrize("res_type", ["fft", "polyphase"])
@pytest.mark.parametrize("orig_sr,target_sr", RATES)
def test_resample_matches_librosa(orig_sr, target_sr, res_type):
  fn = jax.jit(functools.partial(audio.resample, orig_sr=orig_sr, target_sr=target_sr,
                                 res_type=res_type))
  for n in (orig_sr + 1, 7919):  # odd lengths, one of them prime
    x = np.stack([_signal(n, orig_sr, s) for s in range(2)])
    x /= np.abs(x).max(axis=-1, keepdims=True)  # unit amplitude
    out = np.asarray(fn(x.astype(np.float32)))
    assert out.shape == (2, audio.resampled_length(n, orig_sr, target_sr))
    for i in range(2):
      ref = librosa.resample(x[i], orig_sr=orig_sr, target_sr=target_sr, res_type=res_type)
      assert out.shape[-1] == ref.shape[-1]
      err = np.abs(out[i] - ref).max()
      assert err < RESAMPLE_ATOL, f"{res_type} {orig_sr}->{target_sr} n={n}: {err:.2e}"


@pytest.mark.parametrize("orig_sr,target_sr", RATES)
def test_resample_close_to_soxr_hq(orig_sr, target_sr):
  # A length for which n * target / orig is whole: otherwise the FFT method (librosa's
  # too) samples the clip on a grid stretched by up to one output sample.
  n = int(orig_sr * 1.3)
  rng = np.random.default_rng(1)
  t = np.arange(n) / orig_sr
  freqs = rng.uniform(50, 0.8 * min(orig_sr, target_sr) / 2, 8)
  phases = rng.uniform(0, 2 * np.pi, 8)
  x = 0.9 * np.mean(np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None]), axis=0)
  ref = librosa.resample(x, orig_sr=orig_sr, target_sr=target_sr)  # soxr_hq
  for res_type, tol in (("fft", 2e-4), ("polyphase", 3e-3)):
    out = np.asarray(_jit(audio.resample, orig_sr=orig_sr, target_sr=target_sr,
                          res_type=res_type)(x.astype(np.float32)))
    m = len(ref)
    assert out.shape == ref.shape
    edge = m // 10
    err = np.abs(out - ref)[edge:m - edge].max()
    assert err < tol, f"{res_type} vs soxr_hq {orig_sr}->{target_sr}: {err:.2e}"


def test_resample_identity_and_axis():
  x = _signal(1001, 16000, 0).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(audio.resample(x, 16000, 16000)), x)
  xt = np.stack([x, -x], axis=1)  # [samples, channels]
  out = np.asarray(_jit(audio.resample, orig_sr=16000, target_sr=48000, axis=0)(xt))
  assert out.shape == (3003, 2)
  ref = librosa.resample(x.astype(np.float64), orig_sr=16000, target_sr=48000, res_type="fft")
  assert np.abs(out[:, 0] - ref).max() < RESAMPLE_ATOL
  assert np.abs(out[:, 1] + ref).max() < RESAMPLE_ATOL


# ----------------------------------------------------------------------------- mel + dB


def _check_mel(out, ref):
  assert out.shape == ref.shape, (out.shape, ref.shape)
  mask = ref > 1e-6 * ref.max()
  rel = (np.abs(out - ref)[mask] / ref[mask]).max()
  assert rel < MEL_RTOL, f"mel power relative error {rel:.2e}"


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_melspectrogram_and_db_match_librosa(recipe):
  params = RECIPES[recipe]
  sr = params["sr"]
  lengths = [sr + 321, int(0.73 * sr) + 1, 777]  # odd; the last is shorter than n_fft
  clips, batch = _batch(lengths, sr)

  mel_fn = jax.jit(functools.partial(audio.melspectrogram, **params))
  db_fn = jax.jit(lambda s: audio.power_to_db(s, ref="max", top_db=80.0))
  mel = mel_fn(batch.astype(np.float32))
  db = np.asarray(db_fn(mel))
  mel = np.asarray(mel)
  n_frames = np.asarray(audio.melspectrogram_num_frames(np.array(lengths), n_fft=params["n_fft"],
                                                        hop_length=params["hop_length"]))
  assert mel.shape[-1] == n_frames.max()
  for i, clip in enumerate(clips):
    ref = _librosa_mel(clip, **params)
    assert ref.shape[-1] == n_frames[i]
    # Zero padding of the batch does not reach the clip's own frames (pad_mode constant).
    _check_mel(mel[i, :, :n_frames[i]], ref)
    # The dB of the clip alone, so that ref=max and top_db are the clip's own.
    own = np.asarray(db_fn(mel_fn(clip.astype(np.float32))))
    ref_db = librosa.power_to_db(ref, ref=np.max, top_db=80.0)
    err = np.abs(own - ref_db).max()
    assert err < DB_ATOL, f"{recipe} clip {i}: dB error {err:.2e}"
  # The batch's dB is per example: the longest clip covers its whole row.
  ref_db = librosa.power_to_db(_librosa_mel(clips[0], **params), ref=np.max)
  assert np.abs(db[0] - ref_db).max() < DB_ATOL


@pytest.mark.parametrize("kw", [
    dict(pad_mode="reflect"),
    dict(power=1.0, window="hamming"),
    dict(center=False, htk=True, norm=None),
    dict(win_length=300, window=("kaiser", 8.0)),
])
def test_melspectrogram_options(kw):
  params = {**SLAP, **kw}
  for n in (16001, 700):
    x = _signal(n, 16000, n)
    out = np.asarray(_jit(audio.melspectrogram, **params)(x.astype(np.float32)))
    _check_mel(out, _librosa_mel(x, **params))


def test_librosa_defaults():
  x = _signal(22050 + 5, 22050, 3)
  out = np.asarray(_jit(audio.melspectrogram, sr=22050)(x.astype(np.float32)))
  _check_mel(out, _librosa_mel(x, sr=22050))
  assert out.shape[-2] == 128


def test_db_functions_match_librosa():
  rng = np.random.default_rng(0)
  s = rng.gamma(0.3, size=(64, 50)) * 10.0 ** rng.uniform(-9, 2, size=(64, 50))
  s32 = s.astype(np.float32)
  # ref=np.max is accepted as an alias of ref="max", so librosa calls port unchanged.
  for kw in (dict(), dict(ref=3.0, top_db=None), dict(ref=np.max, top_db=40.0), dict(amin=1e-6)):
    out = np.asarray(audio.power_to_db(s32, **kw))
    assert np.abs(out - librosa.power_to_db(s, **kw)).max() < DB_ATOL, kw
  out = np.asarray(audio.power_to_db(s32, ref="max"))
  assert np.abs(out - librosa.power_to_db(s, ref=np.max)).max() < DB_ATOL
  a = np.sqrt(s)
  for kw in (dict(), dict(ref=np.max), dict(ref=0.5, amin=1e-3, top_db=None)):
    out = np.asarray(audio.amplitude_to_db(a.astype(np.float32), **kw))
    assert np.abs(out - librosa.amplitude_to_db(a, **kw)).max() < DB_ATOL, kw
  # Per example: a quiet clip next to a loud one keeps its own 0 dB reference and floor.
  batch = np.stack([s, s * 1e-3]).astype(np.float32)  # quiet clip stays above amin
  out = np.asarray(audio.power_to_db(batch, ref="max"))
  np.testing.assert_allclose(out[0], out[1], atol=DB_ATOL)
  np.testing.assert_allclose(out[1], librosa.power_to_db(s * 1e-3, ref=np.max), atol=DB_ATOL)


# ----------------------------------------------------------------------------- fbank


def _knf(x, *, sample_frequency=16000.0, num_mel_bins=80, **frame_kw):
  opts = knf.FbankOptions()
  opts.frame_opts.dither = 0.0
  opts.frame_opts.samp_freq = sample_frequency
  for k, v in frame_kw.items():
    setattr(opts.frame_opts, k, v)
  opts.mel_opts.num_bins = num_mel_bins
  f = knf.OnlineFbank(opts)
  f.accept_waveform(sample_frequency, np.asarray(x, np.float32).tolist())
  f.input_finished()
  return np.stack([np.asarray(f.get_frame(i)) for i in range(f.num_frames_ready)])


def _check_fbank(out, ref):
  assert out.shape == ref.shape, (out.shape, ref.shape)
  err = np.abs(out - ref)
  below = ref.max(axis=-1, keepdims=True) - ref
  for depth, atol in FBANK_ATOL:
    worst = err[below < depth].max()
    assert worst < atol, f"fbank error {worst:.2e} in bands within {depth} of the frame peak"


@pytest.mark.parametrize("window_type", ["povey", "hanning", "hamming", "rectangular", "blackman"])
@pytest.mark.parametrize("snip_edges", [True, False])
def test_fbank_matches_kaldi_native_fbank(window_type, snip_edges):
  lengths = [16000 + 123, 12345, 401]
  clips, batch = _batch(lengths, 16000, seed=5)
  fn = jax.jit(functools.partial(audio.fbank, num_mel_bins=80, window_type=window_type,
                                 snip_edges=snip_edges))
  out = np.asarray(fn(batch.astype(np.float32)))
  for i, clip in enumerate(clips):
    ref = _knf(clip, window_type=window_type, snip_edges=snip_edges)
    k = int(audio.fbank_num_frames(lengths[i], snip_edges=snip_edges))
    assert ref.shape[0] == k
    if snip_edges:  # the batch's zero padding does not reach the clip's own frames
      _check_fbank(out[i, :k], ref)
    else:  # reflection at the clip's own end: run the clip alone
      _check_fbank(np.asarray(fn(clip.astype(np.float32))), ref)


def test_fbank_other_options_match_kaldi_native_fbank():
  x = _signal(44100 + 77, 44100, 9)
  out = _jit(audio.fbank, sample_frequency=44100.0, num_mel_bins=64, high_freq=-400.0,
             low_freq=60.0, use_power=False, round_to_power_of_two=False)(x.astype(np.float32))
  opts_ref = knf.FbankOptions()
  opts_ref.frame_opts.dither = 0.0
  opts_ref.frame_opts.samp_freq = 44100.0
  opts_ref.frame_opts.round_to_power_of_two = False
  opts_ref.mel_opts.num_bins = 64
  opts_ref.mel_opts.high_freq = -400.0
  opts_ref.mel_opts.low_freq = 60.0
  opts_ref.use_power = False
  f = knf.OnlineFbank(opts_ref)
  f.accept_waveform(44100.0, x.astype(np.float32).tolist())
  f.input_finished()
  ref = np.stack([np.asarray(f.get_frame(i)) for i in range(f.num_frames_ready)])
  _check_fbank(np.asarray(out), ref)
  # 128 bins where kaldi-native-fbank accepts them (1024-point FFT), int16-scaled input.
  y = _signal(16000 + 5, 16000, 2) * 32767
  _check_fbank(np.asarray(_jit(audio.fbank, frame_length_ms=50.0,
                               window_type="hanning")(y.astype(np.float32))),
               _knf(y, num_mel_bins=128, frame_length_ms=50.0, window_type="hanning"))


def _fbank_float64(x, num_mel_bins, window_type):
  """Float64 numpy Kaldi fbank (16 kHz, 25/10 ms, 512-point FFT, 20 Hz..Nyquist).

  Mel banks as torchaudio.compliance.kaldi.get_mel_banks writes them, max(0, min(up,
  down)), which leaves a bin that covers no FFT bin at zero instead of failing.
  """
  frames = np.lib.stride_tricks.sliding_window_view(x, 400)[::160]
  frames = frames - frames.mean(axis=-1, keepdims=True)
  frames = frames - 0.97 * np.concatenate([frames[:, :1], frames[:, :-1]], axis=-1)
  win = scipy.signal.get_window("hann", 400, fftbins=False)
  frames = frames * (win ** 0.85 if window_type == "povey" else win)
  power = np.abs(np.fft.rfft(frames, 512)) ** 2
  mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)
  edges = mel(20.0) + (mel(8000.0) - mel(20.0)) / (num_mel_bins + 1) * np.arange(num_mel_bins + 2)
  fft_mel = mel(16000 / 512 * np.arange(256))[:, None]
  left, center, right = edges[:-2], edges[1:-1], edges[2:]
  banks = np.maximum(0, np.minimum((fft_mel - left) / (center - left),
                                   (right - fft_mel) / (right - center)))
  return np.log(np.maximum(power[:, :256] @ banks, np.finfo(np.float32).eps))


@pytest.mark.parametrize("window_type", ["povey", "hanning"])
def test_fbank_audiomae_128_bins(window_type):
  # AudioMAE: 128 bins over a 512-point FFT. Mel bin 3 is narrower than an FFT bin, so
  # kaldi-native-fbank refuses these options; torchaudio (AudioMAE's front end) keeps the
  # bin at zero. Check the float64 reference against kaldi-native-fbank on 80 bins first.
  with pytest.raises(Exception, match="num_mel_bins too large"):
    _knf(np.zeros(16000), num_mel_bins=128)
  x = _signal(16000 * 2 + 3, 16000, 11)
  _check_fbank(_fbank_float64(x.astype(np.float32).astype(np.float64), 80, window_type),
               _knf(x, num_mel_bins=80, window_type=window_type))
  lengths = [len(x), 9001]
  clips, batch = _batch(lengths, 16000, seed=11)
  out = np.asarray(jax.jit(functools.partial(audio.fbank, window_type=window_type))(
      batch.astype(np.float32)))
  assert out.shape == (2, 198, 128)
  for i, clip in enumerate(clips):
    ref = _fbank_float64(clip.astype(np.float32).astype(np.float64), 128, window_type)
    _check_fbank(out[i, :len(ref)], ref)
  np.testing.assert_array_equal(out[..., 3], np.log(np.finfo(np.float32).eps))


def test_num_frames_helpers_are_jittable():
  lengths = jnp.array([160000, 400, 399, 12345])
  got = jax.jit(lambda n: audio.fbank_num_frames(n))(lengths)
  np.testing.assert_array_equal(got, [998, 1, 0, 75])
  got = jax.jit(lambda n: audio.melspectrogram_num_frames(n, n_fft=512, hop_length=160))(lengths)
  np.testing.assert_array_equal(got, [1001, 3, 3, 78])
  assert audio.melspectrogram_num_frames(16000, n_fft=1024, hop_length=512, center=False) == 30


# ----------------------------------------------------------------------------- jit, batch


def test_jit_and_leading_batch_dims():
  x = np.stack([np.stack([_signal(8000 + 17, 16000, 3 * a + b) for b in range(3)])
                for a in range(2)]).astype(np.float32)  # [2, 3, samples]
  mel_fn = _jit(audio.melspectrogram, **SLAP)
  fb_fn = _jit(audio.fbank, window_type="hanning")
  rs_fn = _jit(audio.resample, orig_sr=16000, target_sr=22050, res_type="polyphase")
  db_fn = _jit(audio.power_to_db, ref="max")
  mel, fb, rs = mel_fn(x), fb_fn(x), rs_fn(x)
  assert mel.shape == (2, 3, 128, 51) and fb.shape == (2, 3, 48, 128)
  assert rs.shape == (2, 3, audio.resampled_length(8017, 16000, 22050))
  for a, b in [(0, 0), (1, 2)]:
    np.testing.assert_allclose(mel[a, b], mel_fn(x[a, b]), rtol=1e-5,
                               atol=1e-6 * float(mel[a, b].max()))
    np.testing.assert_allclose(fb[a, b], fb_fn(x[a, b]), atol=1e-3)
    np.testing.assert_allclose(rs[a, b], rs_fn(x[a, b]), atol=1e-6)
    np.testing.assert_allclose(db_fn(mel)[a, b], db_fn(mel[a, b]), atol=1e-4)
  # Eager (unjitted) calls work too.
  np.testing.assert_allclose(audio.power_to_db(mel[0, 0], ref="max"), db_fn(mel[0, 0]), atol=1e-4)
  np.testing.assert_allclose(audio.resample(x[0, 0], 16000, 8000),
                             _jit(audio.resample, orig_sr=16000, target_sr=8000)(x[0, 0]),
                             atol=1e-6)


def test_cpu_chunked_path_equals_one_shot(monkeypatch):
  # On CPU, batches beyond audio._CPU_CHUNK_ELEMENTS go through lax.map in chunks (with a
  # remainder here: 6 rows, 4 per chunk); the result must not depend on it.
  x = np.stack([_signal(8000 + 17, 16000, s) for s in range(6)]).reshape(2, 3, -1)
  x = x.astype(np.float32)
  calls = {
      "mel": (functools.partial(audio.melspectrogram, **SLAP), 51 * 512),
      "fbank": (functools.partial(audio.fbank, window_type="povey"), 48 * 512),
  }
  for name, (fn, row_elements) in calls.items():
    monkeypatch.setattr(audio, "_CPU_CHUNK_ELEMENTS", 1 << 40)
    whole = np.asarray(jax.jit(fn)(x))
    monkeypatch.setattr(audio, "_CPU_CHUNK_ELEMENTS", 4 * row_elements)
    chunked = np.asarray(jax.jit(fn)(x))
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max(),
                               err_msg=name)
  poly = functools.partial(audio.resample, orig_sr=16000, target_sr=22050, res_type="polyphase")
  monkeypatch.setattr(audio, "_CPU_CHUNK_ELEMENTS", 1 << 40)
  whole = np.asarray(jax.jit(poly)(x))
  monkeypatch.setattr(audio, "_CPU_CHUNK_ELEMENTS", 1)
  np.testing.assert_allclose(np.asarray(jax.jit(poly)(x)), whole, atol=1e-6)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("call,match", [
    (lambda x: audio.melspectrogram(x, sr=16000, n_fft=100, win_length=400),
     r"n_fft=100 < win_length=400"),
    (lambda x: audio.melspectrogram(x, sr=16000, fmax=9000), r"fmax=9000 > sr/2"),
    (lambda x: audio.melspectrogram(x, sr=16000, fmin=-1.0), r"fmin=-1.0"),
    (lambda x: audio.melspectrogram(x, sr=16000, window="nope"), r"window='nope'"),
    (lambda x: audio.melspectrogram(x, sr=16000, pad_mode="wrap"), r"pad_mode='wrap'"),
    (lambda x: audio.melspectrogram(x, sr=16000, hop_length=0), r"hop_length=0"),
    (lambda x: audio.melspectrogram(x[:100], sr=16000, n_fft=512, center=False),
     r"n_fft=512 is too large .* length=100"),
    (lambda x: audio.resample(x, 44100, 16000, res_type="soxr_hq"), r"res_type='soxr_hq'"),
    (lambda x: audio.resample(x, 44100.5, 16000, res_type="polyphase"), r"integer rates"),
    (lambda x: audio.resample(x, 0, 16000), r"orig_sr=0"),
    (lambda x: audio.fbank(x[:399]), r"399 samples, fewer than one frame .*400 samples"),
    (lambda x: audio.fbank(x, window_type="hann"), r"window_type='hann'"),
    (lambda x: audio.fbank(x, high_freq=9000.0), r"high_freq=9000.0"),
    (lambda x: audio.fbank(x, num_mel_bins=2), r"num_mel_bins=2"),
    (lambda x: audio.fbank(x, frame_length_ms=25.0625, round_to_power_of_two=False),
     r"frame_length_ms=25.0625 gives an odd frame of 401"),
    (lambda x: audio.power_to_db(x, ref="min"), r"ref='min'"),
    (lambda x: audio.power_to_db(x, amin=0.0), r"amin=0.0"),
])
def test_errors_name_the_parameter(call, match):
  x = np.zeros(4000, np.float32)
  with pytest.raises(ValueError, match=match):
    call(x)
  with pytest.raises(ValueError, match=match):  # raised while tracing, not inside XLA
    jax.jit(call)(x)


def test_integer_input_is_refused():
  with pytest.raises(TypeError, match="floating-point"):
    audio.melspectrogram(np.zeros(4000, np.int16), sr=16000)

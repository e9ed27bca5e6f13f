"""jaxclap.augment (float32, jitted) against float64 references: scipy.signal.lfilter with
the same sox/RBJ biquad coefficients, librosa.util.normalize's peak rule, 10**(dB/20).

Signals are seeded uniform noise in [-1, 1] (2 s at 16 kHz) and pure tones.
Tolerances (measured maxima in brackets):
  lowpass 300 Hz / highpass 3 kHz vs lfilter, unclipped, every method: abs 2e-5
    [chunked 2.4e-6, sequential 2.2e-6, associative 4.6e-6]
  tone attenuation vs scipy.signal.freqz at the tone: 0.05 dB
  gain: exact (x * float32(10**(5/20))); normalisation: peak 1 within 1 ulp
The associative method compiles slowly on CPU (10-20 s at 128k samples), so it is
checked on a short clip only.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
import scipy.signal

from jaxclap import augment

SR = 16000
FILTER_ATOL = 2e-5


def _noise(shape, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _tone(freq, n=SR, amp=0.5):
  return (amp * np.sin(2 * np.pi * freq * np.arange(n) / SR)).astype(np.float32)


@pytest.mark.parametrize("kind,cutoff", [("lowpass", 300.0), ("highpass", 3000.0)])
@pytest.mark.parametrize("method", ["chunked", "sequential"])
def test_filter_matches_lfilter(kind, cutoff, method):
  x = _noise((3, 2 * SR))
  fn = jax.jit(functools.partial(getattr(augment, kind), sample_rate=SR, cutoff_hz=cutoff,
                                 clip=False, method=method))
  b, a = augment.biquad_coefficients(kind, sample_rate=SR, cutoff_hz=cutoff)
  ref = scipy.signal.lfilter(b, a, x.astype(np.float64), axis=-1)
  np.testing.assert_allclose(np.asarray(fn(x)), ref, rtol=0, atol=FILTER_ATOL)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 1000])
def test_associative_and_odd_lengths_match_lfilter(n):
  x = _noise((2, n), seed=n)
  b, a = augment.biquad_coefficients("lowpass", sample_rate=SR, cutoff_hz=300.0)
  ref = scipy.signal.lfilter(b, a, x.astype(np.float64), axis=-1)
  for method in ("associative", "chunked", "sequential"):
    y = jax.jit(functools.partial(augment.biquad, b=b, a=a, method=method))(x)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=0, atol=FILTER_ATOL, err_msg=method)


def test_coefficients_are_sox_rbj_butterworth():
  # Q = sqrt(1/2) makes the RBJ two-pole filter the bilinear-transform Butterworth,
  # pre-warped at the cutoff: scipy's butter(2, ...) with the same warping agrees.
  for kind, fc in (("lowpass", 300.0), ("highpass", 3000.0)):
    b, a = augment.biquad_coefficients(kind, sample_rate=SR, cutoff_hz=fc)
    rb, ra = scipy.signal.butter(2, fc, btype="low" if kind == "lowpass" else "high", fs=SR)
    np.testing.assert_allclose(b, rb, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(a, ra, rtol=1e-12, atol=1e-15)
    # -3.01 dB at the cutoff.
    _, h = scipy.signal.freqz(b, a, worN=[fc], fs=SR)
    assert abs(20 * np.log10(abs(h[0])) + 3.0103) < 1e-3


def _gain_db(kind, cutoff, freq):
  y = np.asarray(getattr(augment, kind)(_tone(freq)[None], sample_rate=SR, cutoff_hz=cutoff))
  # Amplitude from the RMS over whole periods (0.9 s), not the peak sample: at 4 kHz =
  # fs/4 the samples hit only four phases of the shifted sine. By 0.1 s the transient
  # (poles at radius <= 0.92) is long gone.
  steady = y[0, SR // 10:]
  return 20 * np.log10(np.sqrt(2 * np.mean(steady.astype(np.float64) ** 2)) / 0.5)


@pytest.mark.parametrize("kind,cutoff,passed,stopped", [
    ("lowpass", 300.0, 100.0, 4000.0), ("highpass", 3000.0, 4000.0, 100.0)])
def test_frequency_response(kind, cutoff, passed, stopped):
  b, a = augment.biquad_coefficients(kind, sample_rate=SR, cutoff_hz=cutoff)
  _, h = scipy.signal.freqz(b, a, worN=[passed, stopped], fs=SR)
  expected = 20 * np.log10(np.abs(h))
  got = [_gain_db(kind, cutoff, passed), _gain_db(kind, cutoff, stopped)]
  np.testing.assert_allclose(got, expected, atol=0.05)
  # Two poles: 12 dB/octave. 4 kHz is 3.7 octaves above 300 Hz (about -45 dB with the
  # bilinear warp), 100 Hz 4.9 octaves below 3 kHz (about -59 dB); pass band within ~1.5 dB.
  assert got[0] > -1.5
  assert got[1] < (-40.0 if kind == "lowpass" else -55.0)


def test_gain_is_exactly_5_db_and_clips_like_sox():
  x = 0.8 * _noise((2, 1000))
  factor = np.float32(10 ** (5 / 20))
  y = np.asarray(augment.gain(x, clip=False))
  np.testing.assert_array_equal(y, x * factor)
  assert np.abs(y).max() > 1.0  # kept as float above full scale
  yc = np.asarray(augment.gain(x))  # default: sox's hard clip at full scale
  np.testing.assert_array_equal(yc, np.clip(x * factor, -1, 1))
  assert np.abs(yc).max() == 1.0
  np.testing.assert_array_equal(np.asarray(augment.gain(x, gain_db=-6.0)),
                                x * np.float32(10 ** (-6 / 20)))


def test_normalize_peak_on_real_part():
  x = 0.3 * _noise((3, 4000))
  lengths = np.array([4000, 2500, 10])
  x[1, 2500:] = 5.0  # loud garbage in the padding must not set the peak
  y = np.asarray(jax.jit(augment.normalize)(x, lengths))
  for i, n in enumerate(lengths):
    assert abs(np.abs(y[i, :n]).max() - 1.0) <= 1e-7
    np.testing.assert_allclose(y[i, :n], x[i, :n] / np.abs(x[i, :n]).max(), rtol=1e-6)
    assert not y[i, n:].any()
  # Silence stays silence (librosa leaves a below-threshold clip as it is).
  assert not np.asarray(augment.normalize(np.zeros((1, 100), np.float32))).any()


def test_padding_stays_zero_and_real_part_is_unpadded_result():
  x = _noise((4, 3000))
  lengths = np.array([3000, 1234, 1, 0])
  x_garbage = x.copy()
  for i, n in enumerate(lengths):
    x_garbage[i, n:] = 7.0
  for kind, kw in (("lowpass", dict(sample_rate=SR)), ("highpass", dict(sample_rate=SR)),
                   ("gain", {}), ("normalize", {})):
    y = np.asarray(getattr(augment, kind)(x_garbage, lengths, **kw))
    for i, n in enumerate(lengths):
      assert not y[i, n:].any(), (kind, i)
      alone = np.asarray(getattr(augment, kind)(x[i:i + 1, :n], **kw))[0] if n else y[i, :0]
      np.testing.assert_allclose(y[i, :n], alone, rtol=0, atol=1e-6, err_msg=kind)


def test_random_augment_rows_are_the_drawn_transform():
  x = 0.8 * _noise((16, 2000), seed=3)
  lengths = np.random.default_rng(4).integers(1, 2001, 16)
  rng = jax.random.key(7)
  fn = jax.jit(functools.partial(augment.random_augment, sample_rate=SR))
  y = np.asarray(fn(rng, x, lengths))
  drawn = np.asarray(augment.draw_kinds(rng, 16))
  assert set(drawn) == {0, 1, 2, 3}, drawn  # this key happens to draw every kind
  for i, k in enumerate(drawn):
    kind = augment.KINDS[k]
    kw = {} if kind in ("gain", "normalize") else dict(sample_rate=SR)
    ref = np.asarray(getattr(augment, kind)(x[i:i + 1], lengths[i:i + 1], **kw))[0]
    np.testing.assert_allclose(y[i], ref, rtol=0, atol=1e-6, err_msg=kind)
    assert not y[i, lengths[i]:].any()


def test_random_augment_draws_uniformly_and_deterministically():
  counts = np.bincount(np.asarray(augment.draw_kinds(jax.random.key(0), 40000)), minlength=4)
  # 10000 expected each; sd ~87, so 5 sd is 435.
  assert np.all(np.abs(counts - 10000) < 450), counts
  x = _noise((64, 500))
  lengths = np.full(64, 500)
  fn = jax.jit(functools.partial(augment.random_augment, sample_rate=SR))
  a = np.asarray(fn(jax.random.key(1), x, lengths))
  np.testing.assert_array_equal(a, np.asarray(fn(jax.random.key(1), x, lengths)))
  assert not np.array_equal(a, np.asarray(fn(jax.random.key(2), x, lengths)))
  # A subset of kinds: only those are drawn.
  only = augment.draw_kinds(jax.random.key(3), 1000, ("gain", "highpass"))
  assert set(np.asarray(only)) == {0, 1}
  y = np.asarray(augment.random_augment(jax.random.key(3), x, lengths, sample_rate=SR,
                                        kinds=("gain",), clip=False))
  np.testing.assert_array_equal(y, x * np.float32(10 ** 0.25))


def test_bad_parameters_raise_value_error():
  x = _noise((2, 100))
  with pytest.raises(ValueError, match="'reverb'"):
    augment.random_augment(jax.random.key(0), x, None, sample_rate=SR,
                           kinds=("gain", "reverb"))
  with pytest.raises(ValueError, match="kinds"):
    augment.random_augment(jax.random.key(0), x, None, sample_rate=SR, kinds=())
  with pytest.raises(ValueError, match="highpass_hz"):
    augment.random_augment(jax.random.key(0), x, None, sample_rate=SR, highpass_hz=9000.0)
  with pytest.raises(ValueError, match="sample_rate"):
    augment.lowpass(x, sample_rate=0)
  with pytest.raises(ValueError, match="method"):
    augment.lowpass(x, sample_rate=SR, method="fft")
  with pytest.raises(ValueError, match="lengths"):
    augment.gain(x, np.array([1, 2, 3]))


# ----------------------------------------------------------------------------- recording chain
#
# Each stage against an independent float64 reference: scipy.signal.fftconvolve (reverb),
# Schroeder backward integration (the simulated RT60), scipy.signal.welch (noise colour),
# librosa.mu_compress / mu_expand (codec), scipy.signal.butter(4) sos (band), scipy.signal
# .freqz and lfilter (peaking EQ); then the whole chain row by row against the same
# stages run in numpy / scipy with the parameters draw_chain drew.

import librosa  # noqa: E402

CHAIN_ALL = dict(p_reverb=1.0, p_noise=1.0, p_eq=1.0, p_band=1.0, p_codec=1.0, p_gain=1.0)


def test_reverb_matches_fftconvolve_with_padding():
  x = _noise((3, 3000), seed=11)
  ir = _noise((3, 700), seed=12) * np.exp(-np.arange(700) / 100)[None].astype(np.float32)
  lengths = np.array([3000, 1500, 0])
  x_garbage = x.copy()
  x_garbage[1, 1500:] = 5.0
  y = np.asarray(jax.jit(augment.reverb)(x_garbage, ir, lengths))
  for i, n in enumerate(lengths):
    ref = scipy.signal.fftconvolve(x[i, :n].astype(np.float64), ir[i])[:n] if n else []
    np.testing.assert_allclose(y[i, :n], ref, rtol=0, atol=2e-5)
    assert not y[i, n:].any()


def test_simulated_ir_has_the_drawn_rt60_and_drr():
  rt60 = np.array([0.2, 0.5, 0.9], np.float32)
  drr = np.array([0.0, 6.0, 12.0], np.float32)
  h = np.asarray(augment.simulated_ir(jax.random.key(0), rt60, drr, sample_rate=SR,
                                      ir_seconds=1.0), np.float64)
  assert h.shape == (3, SR) and np.all(h[:, 0] == 1)
  np.testing.assert_allclose(10 * np.log10(1 / np.sum(h[:, 1:] ** 2, 1)), drr, atol=1e-3)
  for i, t in enumerate(rt60):
    # Schroeder: backward-integrated energy of the tail, slope of its -5..-25 dB part (T20).
    edc = np.cumsum(h[i, 1:][::-1] ** 2)[::-1]
    edc_db = 10 * np.log10(edc / edc[0])
    sel = (edc_db < -5) & (edc_db > -25)
    slope = np.polyfit(np.arange(edc_db.size)[sel] / SR, edc_db[sel], 1)[0]   # dB / s
    assert abs(-60 / slope - t) < 0.05 * t, (t, -60 / slope)


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0])
def test_colored_noise_has_the_power_law(exponent):
  nz = np.asarray(augment.colored_noise(jax.random.key(1), (4, 4 * SR), np.full(4, exponent)))
  np.testing.assert_allclose(np.sqrt(np.mean(nz ** 2, 1)), 1.0, rtol=1e-4)
  f, psd = scipy.signal.welch(nz.astype(np.float64), fs=SR, nperseg=2048)
  band = (f >= 100) & (f <= 4000)
  slope = np.polyfit(np.log10(f[band]), np.log10(psd.mean(0)[band]), 1)[0]
  assert abs(slope + exponent) < 0.1, slope


def test_add_noise_reaches_the_snr_over_the_real_samples():
  x = _noise((3, 2000), seed=2) * np.float32([[1.0], [0.1], [0.5]])
  nz = _noise((3, 2000), seed=3)
  lengths = np.array([2000, 800, 1])
  snr = np.array([20.0, 5.0, 0.0], np.float32)
  y = np.asarray(jax.jit(augment.add_noise)(x, nz, snr, lengths))
  for i, n in enumerate(lengths):
    xs, ns = x[i, :n].astype(np.float64), nz[i, :n].astype(np.float64)
    ref = xs + ns * np.sqrt(np.mean(xs ** 2) / np.mean(ns ** 2) / 10 ** (snr[i] / 10))
    np.testing.assert_allclose(y[i, :n], ref, rtol=1e-5, atol=1e-6)
    assert not y[i, n:].any()
  assert not np.asarray(augment.add_noise(np.zeros((1, 50), np.float32), nz[:1, :50],
                                          [10.0])).any()   # silence stays silent


def test_mu_law_matches_librosa():
  x = np.concatenate([_noise((1, 20000), seed=5) * 1.2,     # some beyond full scale
                      _noise((1, 20000), seed=6) * 0.01], 1)  # and quiet ones
  y = np.asarray(jax.jit(augment.mu_law)(x))
  ref = librosa.mu_expand(librosa.mu_compress(np.clip(x.astype(np.float64), -1, 1), mu=255,
                                              quantize=True), mu=255, quantize=True)
  same = np.isclose(y, ref, rtol=1e-5, atol=1e-7)
  # float32 vs float64 may put a sample sitting on a bin edge into the next bin.
  assert same.mean() > 0.999, same.mean()
  step = np.abs(np.diff(np.unique(ref)))
  assert np.all(np.abs(y - ref)[~same] <= 1.01 * step.max()), np.abs(y - ref).max()


@pytest.mark.parametrize("band", [(300.0, 3400.0), (0.0, 4000.0), (150.0, 0.0)])
def test_band_is_4th_order_butterworth(band):
  lo, hi = band
  b, a = augment.band_coefficients(lo, hi, SR)
  x = _noise((1, 4000), seed=8)[0].astype(np.float64)
  y = x
  for bb, aa in zip(b, a):
    y = scipy.signal.lfilter(bb, aa, y)
  ref = x
  if lo:
    ref = scipy.signal.sosfilt(scipy.signal.butter(4, lo, "highpass", fs=SR, output="sos"), ref)
  if hi:
    ref = scipy.signal.sosfilt(scipy.signal.butter(4, hi, "lowpass", fs=SR, output="sos"), ref)
  np.testing.assert_allclose(y, ref, rtol=0, atol=1e-9)


def test_peaking_eq_and_its_response_match_scipy():
  w0 = 2 * np.pi * np.array([100.0, 1000.0, 5000.0]) / SR
  q, g = np.array([0.7, 2.0, 4.0]), np.array([6.0, -9.0, 3.0])
  b, a = (np.asarray(c, np.float64) for c in augment.rbj_coefficients("peaking", w0, q, g))
  resp = np.asarray(augment.biquad_response(jax.numpy.asarray(b, np.float32),
                                            jax.numpy.asarray(a, np.float32), 1024))
  for i in range(3):
    _, h = scipy.signal.freqz(b[i], a[i], worN=513, include_nyquist=True)
    np.testing.assert_allclose(resp[i], h, rtol=0, atol=1e-4)
    _, h0 = scipy.signal.freqz(b[i], a[i], worN=[w0[i]])
    # the peak is the drawn gain (to the float32 of the jnp coefficients)
    assert abs(20 * np.log10(abs(h0[0])) - g[i]) < 1e-4
  for kind in ("lowpass", "highpass"):   # the jnp RBJ formulas are the numpy ones
    bj, aj = augment.rbj_coefficients(kind, w0[1], augment.BUTTERWORTH_Q)
    bn, an = augment.biquad_coefficients(kind, sample_rate=SR, cutoff_hz=1000.0)
    np.testing.assert_allclose(np.asarray(bj), bn, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(aj), an, rtol=1e-6)


def _chain_reference(rng, x, lengths, kw, *, ir_seconds=0.25):
  """recording_chain's rows, one at a time, in float64 numpy / scipy (the draws taken
  from jaxclap.augment, every operation not)."""
  batch, n = x.shape
  picked, key = augment.chain_picks(rng, batch, kw.get("rows", 1.0))
  kw = {k: v for k, v in kw.items() if k != "rows"}
  draw_key, ir_key, noise_key = jax.random.split(key, 3)
  picked = np.asarray(picked)
  d = {k: np.asarray(v, np.float64) for k, v in augment.draw_chain(
      draw_key, picked.size, sample_rate=SR, **kw).items()}
  ir = np.asarray(augment.simulated_ir(ir_key, d["rt60"], d["drr_db"], sample_rate=SR,
                                       ir_seconds=ir_seconds), np.float64)
  nz = np.asarray(augment.colored_noise(noise_key, (picked.size, n), d["noise_exponent"]),
                  np.float64)
  bands = kw.get("bands", (augment.TELEPHONE_BAND,))
  out = x.astype(np.float64).copy()
  for j, i in enumerate(picked):
    m = lengths[i]
    out[i] = 0
    if not m:
      continue
    y = x[i, :m].astype(np.float64)
    level = np.sqrt(np.mean(y ** 2)) if m else 0.0
    if d["reverb"][j]:
      y = scipy.signal.fftconvolve(y, ir[j])[:m]
    if d["noise"][j] and m:
      ns = nz[j, :m]
      y = y + ns * np.sqrt(np.mean(y ** 2) / np.mean(ns ** 2) / 10 ** (d["snr_db"][j] / 10))
    if d["eq"][j]:
      for w0, q, g in zip(d["eq_w0"][j], d["eq_q"][j], d["eq_gain_db"][j]):
        amp, alpha = 10 ** (g / 40), np.sin(w0) / (2 * q)
        y = scipy.signal.lfilter([1 + alpha * amp, -2 * np.cos(w0), 1 - alpha * amp],
                                 [1 + alpha / amp, -2 * np.cos(w0), 1 - alpha / amp], y)
    if d["band"][j] and m:
      lo, hi = bands[int(d["band_index"][j])]
      if lo:
        y = scipy.signal.sosfilt(scipy.signal.butter(4, lo, "highpass", fs=SR, output="sos"), y)
      if hi:
        y = scipy.signal.sosfilt(scipy.signal.butter(4, hi, "lowpass", fs=SR, output="sos"), y)
    if d["codec"][j] and m:
      y = librosa.mu_expand(librosa.mu_compress(np.clip(y, -1, 1), mu=255, quantize=True),
                            mu=255, quantize=True)
    if m and np.any(y):
      y = y * level / np.sqrt(np.mean(y ** 2))
    if d["gain"][j]:
      y = y * 10 ** (d["gain_db"][j] / 20)
    out[i] = 0
    out[i, :m] = np.clip(y, -1, 1)
  for i in range(batch):
    out[i, lengths[i]:] = 0
  return out, d


@pytest.mark.parametrize("kw", [
    dict(CHAIN_ALL, bands=(augment.TELEPHONE_BAND, (0.0, 4000.0))),   # every stage
    dict(p_reverb=0.5, p_noise=0.5, p_eq=0.5, p_band=0.5, p_codec=0.0, p_gain=0.5,
         rows=0.5, eq_bands=3)])                                      # some, on some rows
def test_recording_chain_rows_match_the_reference_stages(kw):
  x = 0.3 * _noise((8, 6000), seed=9)
  lengths = np.array([6000, 6000, 4100, 2500, 6000, 1, 0, 5000])
  x_garbage = x.copy()
  for i, n in enumerate(lengths):
    x_garbage[i, n:] = 3.0   # padding must not leak into anything
  rng = jax.random.key(4)
  fn = jax.jit(functools.partial(augment.recording_chain, sample_rate=SR, ir_seconds=0.25,
                                 **kw))
  y = np.asarray(fn(rng, x_garbage, lengths))
  ref, d = _chain_reference(rng, x, lengths, kw)
  # The codec's bins: a float32 sample on a bin edge may take the next one (see
  # test_mu_law_matches_librosa); elsewhere float32 rounding of FFT-domain filtering.
  close = np.isclose(y, ref, rtol=0, atol=2e-4)
  assert close.mean() > 0.999, (close.mean(), np.abs(y - ref).max())
  assert np.abs(y - ref).max() < 0.02
  for i, n in enumerate(lengths):
    assert not y[i, n:].any()
  np.testing.assert_array_equal(y, np.asarray(fn(rng, x_garbage, lengths)))  # seeded
  if kw.get("rows", 1.0) < 1:   # the rows left out pass unchanged
    picked = set(np.asarray(augment.chain_picks(rng, 8, kw["rows"])[0]).tolist())
    assert len(picked) == 4
    for i in set(range(8)) - picked:
      np.testing.assert_array_equal(y[i, :lengths[i]], x[i, :lengths[i]])
  else:
    assert d["reverb"].all() and d["codec"].all()


def test_keep_level_holds_the_rms_and_draws_have_their_rates():
  x = 0.1 * _noise((64, 3000), seed=10)
  y = np.asarray(augment.recording_chain(
      jax.random.key(0), x, None, sample_rate=SR, ir_seconds=0.1,
      **dict(CHAIN_ALL, p_gain=0.0, p_codec=0.0)))
  np.testing.assert_allclose(np.sqrt(np.mean(y ** 2, 1)), np.sqrt(np.mean(x ** 2, 1)), rtol=1e-4)
  d = augment.draw_chain(jax.random.key(1), 20000, sample_rate=SR, p_noise=0.3, p_band=0.8)
  assert abs(float(d["noise"].mean()) - 0.3) < 0.02 and abs(float(d["band"].mean()) - 0.8) < 0.02
  assert not d["reverb"].any()   # every probability is 0 unless given


def test_apply_dispatches_on_recipe_and_chain_parameters_are_checked():
  x = _noise((2, 400))
  key = jax.random.key(0)
  np.testing.assert_array_equal(
      np.asarray(augment.apply(key, x, None, sample_rate=SR, kinds=("lowpass",))),
      np.asarray(augment.random_augment(key, x, None, sample_rate=SR, kinds=("lowpass",))))
  with pytest.raises(ValueError, match="augment.recipe"):
    augment.apply(key, x, None, sample_rate=SR, recipe="chain")
  chain = functools.partial(augment.recording_chain, key, x, None, sample_rate=SR)
  for kw, name in ((dict(p_noise=1.5), "p_noise"), (dict(snr_db=(30, 5)), "snr_db"),
                   (dict(bands=((3400, 300),)), "bands"), (dict(bands=((0, 9000),)), "bands"),
                   (dict(noise_colors=("blue",)), "noise_colors"), (dict(rows=2), "rows"),
                   (dict(rt60=0.5), "rt60"), (dict(mu=0), "mu"), (dict(eq_bands=-1), "eq_bands"),
                   (dict(eq_hz=(50, 9000)), "eq_hz"), (dict(tail_pad=-1), "tail_pad")):
    with pytest.raises(ValueError, match=name):
      chain(**kw)

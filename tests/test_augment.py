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

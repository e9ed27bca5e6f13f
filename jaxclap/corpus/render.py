"""One clip of the embedded corpus, from its planned settings to a checked record.

``render(clip)`` synthesises each planned segment with espeak-ng (``espeak.Synthesizer``,
a pure function of its arguments), resamples it to 16 kHz, gains it to its planned
loudness, joins the segments, measures what the audio actually is (median F0 by YIN,
active-speech RMS) and captions it from those measurements (``captions.py``). The levels
below are what the labels mean; ``pitch_param`` is how a setting aims at one (a measured
curve of espeak's pitch setting against F0), and pitched segments are re-aimed until the
measured F0 lands inside the label's band.

Each spawned worker holds one synthesizer (``_synthesizer``); clips are rendered in plan
order within a chunk, which with per-clip seeds makes the result independent of workers.
"""

from __future__ import annotations

import math
import random

import numpy as np

from jaxclap.corpus import captions as captions_lib
from jaxclap.corpus import records
from jaxclap.corpus import voices

SAMPLE_RATE = 16000
MAX_SECONDS = 12.0
MAX_CAPTION_CHARS = 400

# ---------------------------------------------------------------------------- levels

PITCH_REF_HZ = {"male": 100.0, "female": 195.0, "child": 300.0}
F0_SEARCH_HZ = {"male": (50, 250), "female": (90, 450), "child": (120, 650)}
# Pitch is labelled on modal voices only: whispers have no F0, and the creaky and shaky
# variants' strong flutter leaves it ill-defined (pYIN calls most of their frames unvoiced).
PITCHED_QUALITIES = ("modal",)
PITCH_TARGET_ST = {"low": (-5.5, -3.5), "mid": (-1.0, 1.0), "high": (3.5, 5.5)}
PITCH_BOUNDS_ST = (-2.0, 2.0)
_PITCH_ACCEPT_ST = {"low": (-7.0, -3.0), "mid": (-1.2, 1.2), "high": (3.0, 7.0)}
_PITCH_ATTEMPTS = 4
RATE_WPM = {"slow": (115, 140), "normal": (165, 190), "fast": (235, 275)}
LOUDNESS_TARGET_DB = {"quiet": (-38.0, -34.0), "normal": (-28.0, -25.0), "loud": (-20.0, -17.0)}
LOUDNESS_BOUNDS_DB = (-31.0, -22.5)
CHANGES = {  # change -> (dimension, first level, second level)
    "speeds_up": ("rate", "slow", "fast"), "slows_down": ("rate", "fast", "slow"),
    "pitch_rises": ("pitch", "low", "high"), "pitch_falls": ("pitch", "high", "low"),
    "gets_louder": ("loudness", "quiet", "loud"), "gets_quieter": ("loudness", "loud", "quiet"),
}

# Measured: semitones of median F0 against pitch=50, at espeak pitch 0, 5, ..., 100
# (mean over m3, f3, m8, child, grandma; the variants agree within ~1 st). pitch_range
# also moves the median, by ~0.045 st per unit.
_PITCH_CURVE_ST = [-6.53, -6.0, -5.53, -4.87, -4.43, -3.51, -2.94, -2.3, -1.57, -0.81, -0.06,
                   0.81, 1.57, 2.41, 3.27, 4.09, 4.94, 5.87, 6.78, 7.73, 8.43]
_RANGE_ST_PER_UNIT = 0.045


def pitch_param(variant: str, target_st: float, pitch_range: int) -> int:
  """The espeak pitch setting (0-100) whose median F0 is ``target_st`` from the reference."""
  v = voices.VARIANTS[variant]
  ref = PITCH_REF_HZ["child" if v.age_group == "child" else v.gender]
  rel = target_st - 12 * math.log2(v.f0_hz / ref) - _RANGE_ST_PER_UNIT * (pitch_range - 50)
  return int(round(float(np.interp(rel, _PITCH_CURVE_ST, np.arange(0, 101, 5)))))


def _reaim_pitch(pitch: int, pitch_range: int, by_st: float) -> tuple[int, int]:
  """(pitch, pitch_range) settings that move the median F0 by ``by_st`` semitones; what
  the pitch setting cannot reach (it stops at 0 and 100) is asked of the range."""
  grid = np.arange(0, 101, 5)
  want = float(np.interp(pitch, grid, _PITCH_CURVE_ST)) + by_st
  edge = min(max(want, _PITCH_CURVE_ST[0]), _PITCH_CURVE_ST[-1])
  pitch_range = int(min(100, max(0, round(pitch_range + (want - edge) / _RANGE_ST_PER_UNIT))))
  return int(round(float(np.interp(edge, _PITCH_CURVE_ST, grid)))), pitch_range


# ---------------------------------------------------------------------------- rendering


def _frame_rms(x: np.ndarray, frame: int = 1024, hop: int = 160) -> np.ndarray:
  import librosa
  return librosa.feature.rms(y=x, frame_length=frame, hop_length=hop)[0]


def active_level_db(x: np.ndarray) -> float:
  """RMS level (dBFS) over frames within 25 dB of the loudest: speech, not the pauses."""
  rms = _frame_rms(x)
  active = rms[rms > rms.max() * 10 ** (-25 / 20)]
  return float(10 * np.log10(np.mean(active.astype(np.float64) ** 2) + 1e-20))


def voiced_f0(x: np.ndarray, group: str, sr: int = SAMPLE_RATE) -> np.ndarray:
  """YIN F0 (Hz) of frames within 20 dB of the loudest (the vowels, which carry pitch).

  The search range is the speaker group's (``F0_SEARCH_HZ``), which rules out YIN's
  octave and formant errors; on modal voices the median agrees with pYIN to ~0.5 st.
  """
  import librosa
  fmin, fmax = F0_SEARCH_HZ[group]
  f0 = librosa.yin(x, fmin=fmin, fmax=fmax, sr=sr, frame_length=1024, hop_length=160)
  rms = _frame_rms(x)
  n = min(len(f0), len(rms))
  return f0[:n][rms[:n] > rms[:n].max() * 0.1]


def _semitones(f0_hz: float, group: str) -> float:
  return 12 * math.log2(f0_hz / PITCH_REF_HZ[group])


def _pitch_level(st: float) -> str:
  return "low" if st < PITCH_BOUNDS_ST[0] else "high" if st > PITCH_BOUNDS_ST[1] else "mid"


def _loudness_level(db: float) -> str:
  return "quiet" if db < LOUDNESS_BOUNDS_DB[0] else "loud" if db > LOUDNESS_BOUNDS_DB[1] else "normal"


def _trim(x: np.ndarray, margin_s: float = 0.03) -> np.ndarray:
  """Cuts espeak's leading/trailing near-silence (below -45 dB re the peak)."""
  idx = np.nonzero(np.abs(x) > np.abs(x).max() * 10 ** (-45 / 20))[0]
  m = int(margin_s * SAMPLE_RATE)
  return x[max(0, idx[0] - m): idx[-1] + m + 1]


def _limit(x: np.ndarray, knee: float = 0.8) -> np.ndarray:
  """Soft peak limiter: samples above ``knee`` bend smoothly towards 1.0 instead of
  clipping. Scaling the whole clip down instead would move loud clips out of their band;
  the few limited peaks change the RMS by < 0.1 dB."""
  mag = np.abs(x)
  over = mag > knee
  out = x.copy()
  out[over] = np.sign(x[over]) * (knee + (1 - knee) * np.tanh((mag[over] - knee) / (1 - knee)))
  return out


_SYNTH = None


def _synthesizer():
  global _SYNTH
  if _SYNTH is None:
    from jaxclap.corpus import espeak
    _SYNTH = espeak.Synthesizer(voices.EXTRA_VARIANTS)
  return _SYNTH


def _segment(spk: dict, seg: dict, seed: int):
  """Synthesises one segment at 16 kHz -> (wave, voiced F0 track or None, pitch, range).

  For pitched voices this is a closed loop: the calibration is off by up to ~1.5 st for
  some voice x text pairs, so the settings are re-aimed until the realised median F0
  sits well inside the planned band (one synthesis for ~97% of segments).
  """
  import librosa
  from jaxclap.corpus import espeak

  voice = f"{spk['espeak_voice']}+{spk['espeak_variant']}"
  group = "child" if spk["age_group"] == "child" else spk["gender"]
  pitch, pitch_range = seg["pitch"], spk["pitch_range"]
  for _ in range(_PITCH_ATTEMPTS):
    w = _synthesizer().synth(seg["text"], voice, rate=seg["rate_wpm"], pitch=pitch,
                             pitch_range=pitch_range, seed=seed)
    w = _trim(librosa.resample(w, orig_sr=espeak.SAMPLE_RATE, target_sr=SAMPLE_RATE,
                               res_type="soxr_hq"))
    if spk["quality"] not in PITCHED_QUALITIES:
      return w, None, pitch, pitch_range
    f0 = voiced_f0(w, group)  # gain and the limiter below leave F0 as it is
    st = _semitones(float(np.median(f0)), group)
    lo, hi = _PITCH_ACCEPT_ST[seg["pitch_target"]]
    if lo <= st <= hi:
      break
    pitch, pitch_range = _reaim_pitch(pitch, pitch_range, seg["pitch_target_st"] - st)
  return w, f0, pitch, pitch_range


def render(clip: dict) -> tuple[str, dict]:
  """One planned clip -> (key, record): synthesise, gain, join, measure, caption."""
  from jaxclap.corpus import espeak

  spk = clip["speaker"]
  group = "child" if spk["age_group"] == "child" else spk["gender"]
  silence = np.zeros(int(0.2 * SAMPLE_RATE), np.float32)
  parts, bounds, segs, f0s = [silence], [], [], []
  for i, plan_seg in enumerate(clip["segments"]):
    w, f0, pitch, pitch_range = _segment(spk, plan_seg, clip["seed"] + i)
    if i:
      parts.append(np.zeros(int(clip["pause_s"] * SAMPLE_RATE), np.float32))
    start = sum(len(p) for p in parts)
    parts.append(w * np.float32(10 ** ((plan_seg["loudness_target_db"] - active_level_db(w)) / 20)))
    bounds.append((start, start + len(w)))
    seg = {k: plan_seg[k] for k in ("text", "rate_wpm", "rate_level")}
    seg.update(pitch=pitch, pitch_range=pitch_range)
    if f0 is not None:
      f0s.append(f0)
      seg["f0_hz"] = round(float(np.median(f0)), 1)
      seg["pitch_st"] = round(_semitones(seg["f0_hz"], group), 2)
      seg["pitch_level"] = _pitch_level(seg["pitch_st"])
    segs.append(seg)
  parts.append(silence)
  wave = records.from_pcm16(records.to_pcm16(_limit(np.concatenate(parts))))  # as stored
  for seg, (a, b) in zip(segs, bounds):
    seg["loudness_dbfs"] = round(active_level_db(wave[a:b]), 2)
    seg["loudness_level"] = _loudness_level(seg["loudness_dbfs"])
  speech = np.concatenate([wave[a:b] for a, b in bounds])

  meta = {k: spk[k] for k in ("voice_id", "espeak_voice", "espeak_variant", "gender",
                              "age_group", "quality", "language", "accent", "english_accent",
                              "pitch_range")}
  meta.update({
      "engine": espeak.ENGINE, "voice": f"{spk['espeak_voice']}+{spk['espeak_variant']}",
      "split": clip["split"], "text": clip["text"], "n_words": clip["n_words"],
      "seed": clip["seed"], "change": clip["change"],
      "duration_s": round(len(wave) / SAMPLE_RATE, 3),
      "speech_s": round(len(speech) / SAMPLE_RATE, 3),
      "rate_wpm": segs[0]["rate_wpm"], "rate_level": segs[0]["rate_level"],
      "loudness_dbfs": round(active_level_db(speech), 2),
      "f0_hz": None, "pitch_st": None, "pitch_level": None, "segments": segs,
  })
  meta["loudness_level"] = _loudness_level(meta["loudness_dbfs"])
  if f0s:
    meta["f0_hz"] = round(float(np.median(np.concatenate(f0s))), 1)
    meta["pitch_st"] = round(_semitones(meta["f0_hz"], group), 2)
    meta["pitch_level"] = _pitch_level(meta["pitch_st"])
  if clip["change"]:
    dim, first, second = CHANGES[clip["change"]]
    key = f"{dim}_level"
    got = (segs[0][key], segs[1][key])
    if got != (first, second):  # a narrated change must be true of the audio
      raise AssertionError(f"{clip['id']} ({meta['voice']}): {clip['change']} planned, "
                           f"measured {key} {got}: {segs}")
    meta[key] = "varies"
    if dim == "rate":
      meta["rate_wpm"] = None

  rng = random.Random(clip["seed"])
  wave = records.check_waveform(wave, SAMPLE_RATE, max_seconds=MAX_SECONDS)
  caps = records.check_captions(captions_lib.global_captions(meta, rng),
                                max_chars=MAX_CAPTION_CHARS)
  fine = records.check_captions(captions_lib.fine_captions(meta, rng),
                                max_chars=MAX_CAPTION_CHARS, field="fine_captions")
  return clip["id"], records.make_record(id=clip["id"], wave=wave, sample_rate=SAMPLE_RATE,
                                         captions=caps, fine_captions=fine, metadata=meta)


def warm_up():
  """Runs the numba-compiled code a render uses (librosa's YIN) once, in the process
  that starts the workers: numba caches it beside librosa on first use, and workers that
  all compile and write that cache at once can leave it corrupt (later loads segfault).
  Written once here, the workers only read it."""
  voiced_f0(np.sin(np.linspace(0, 2000, SAMPLE_RATE // 2)).astype(np.float32), "male")


def init_worker(scratch: str):
  """A build's pool initializer: the worker's private espeak data copy goes under the
  build's scratch folder, which the build removes even if the worker is killed."""
  import tempfile
  tempfile.tempdir = scratch


def render_chunk(chunk: list[dict]) -> list[tuple[str, dict]]:
  """One pool task: clips in plan order (espeak's state carries from clip to clip)."""
  return [render(clip) for clip in chunk]


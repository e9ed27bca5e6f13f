"""espeak-ng driven through ctypes: text + voice settings -> a float32 waveform.

The PyPI wheel ``espeakng-loader==0.2.4`` ships ``libespeak-ng.so`` (espeak-ng 1.52) and
its ``espeak-ng-data``, so speech is synthesised with no system package and no network.
This module is the only place that talks to the C library.

Determinism. espeak-ng keeps state in C globals that carry from one utterance to the next
(glottal phase, flutter position, the noise generator), so the same call gives different
samples depending on what was spoken before, and re-initialising does not reset it. We
therefore load a private copy of the library, synthesise ONE clip, and unload it
(``dlclose`` really unmaps it: the copy is never loaded elsewhere), re-seeding the noise
generator with ``espeak_ng_SetRandSeed`` first. Each ``synth`` call is then a pure function
of its arguments, independent of call order, process and worker count. It costs ~5 ms per
clip (loading the phoneme data), which is cheap next to anything else a corpus build does.
"""

from __future__ import annotations

import _ctypes
import ctypes
import difflib
import os
import shutil
import tempfile
import threading
import weakref
from typing import Mapping

import numpy as np

ENGINE = "espeak-ng 1.52"
SAMPLE_RATE = 22050

# From speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit()
_RATE, _VOLUME, _PITCH, _RANGE, _WORDGAP = 1, 2, 3, 4, 7
_CHARS_UTF8 = 1
_EE_OK = 0

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)


class VoiceNotFound(ValueError):
  """The language voice or the variant is not in espeak-ng's data folder."""


def _bind(lib):
  """Declares the C signatures we call (ctypes would otherwise guess int for everything)."""
  lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
  lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
  lib.espeak_SetSynthCallback.restype = None
  lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
  lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
  lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                               ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
  lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
  lib.espeak_ng_SetRandSeed.restype = None
  return lib


class Synthesizer:
  """espeak-ng speech at 22,050 Hz; ``synth`` is deterministic (see the module docstring).

  ``extra_variants`` maps a variant name to the text of an espeak variant file (the format
  of ``espeak-ng-data/voices/!v/*``, e.g. a child voice); they are then usable as
  ``"<language>+<name>"`` like the shipped ones. Each instance has its own library copy;
  calls on one instance are serialised by a lock.
  """

  sample_rate = SAMPLE_RATE
  engine = ENGINE

  def __init__(self, extra_variants: Mapping[str, str] | None = None):
    import espeakng_loader

    self._tmp = tempfile.mkdtemp(prefix="jaxclap-espeak-")
    self._finalizer = weakref.finalize(self, shutil.rmtree, self._tmp, True)
    self._lib_path = os.path.join(self._tmp, "libespeak-ng.so")
    shutil.copyfile(espeakng_loader.get_library_path(), self._lib_path)
    shipped = espeakng_loader.get_data_path()
    if extra_variants:
      self._folder = self._tmp
      _assemble_data(shipped, os.path.join(self._tmp, "espeak-ng-data"), extra_variants)
    else:
      self._folder = os.path.dirname(shipped)
    self.data_path = os.path.join(self._folder, "espeak-ng-data")
    self._languages = _language_names(self.data_path)
    self._variants = sorted(os.listdir(os.path.join(self.data_path, "voices", "!v")))
    self._lock = threading.Lock()

  def close(self):
    """Deletes the private library copy (also done when the object is collected)."""
    self._finalizer()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def languages(self) -> list[str]:
    return sorted(self._languages)

  def variants(self) -> list[str]:
    return list(self._variants)

  def check_voice(self, voice: str):
    """Raises ``VoiceNotFound`` naming the voice (and close matches) unless it exists."""
    lang, _, variant = voice.partition("+")
    if lang.lower() not in self._languages:
      near = difflib.get_close_matches(lang.lower(), self._languages, n=5, cutoff=0.5)
      raise VoiceNotFound(f"espeak-ng voice {voice!r}: no language voice {lang!r} in "
                          f"{self.data_path}/lang (close: {near})")
    if variant and variant not in self._variants:
      near = difflib.get_close_matches(variant, self._variants, n=5, cutoff=0.5)
      raise VoiceNotFound(f"espeak-ng voice {voice!r}: no variant {variant!r} in "
                          f"{self.data_path}/voices/!v (close: {near}; all: "
                          "Synthesizer().variants())")

  def synth(self, text: str, voice: str = "en-us", *, rate: int = 175, pitch: int = 50,
            pitch_range: int = 50, amplitude: int = 100, word_gap: int = 0,
            seed: int = 0) -> np.ndarray:
    """Speaks ``text`` with ``voice`` ("en-us", "de+m3", "en-gb-scotland+whisperf").

    rate: words per minute (80-450); pitch, pitch_range: 0-100 (50 = the variant's own);
    amplitude: 0-200 (100 = default, linear); word_gap: extra pause between words in
    10 ms units; seed: espeak's noise generator (breath, whisper, flutter).
    Returns float32 samples in [-1, 1) at 22,050 Hz.
    """
    self.check_voice(voice)
    if not text or not text.strip():
      raise ValueError(f"voice {voice!r}: empty text")
    params = ((_RATE, "rate", rate, 80, 450), (_PITCH, "pitch", pitch, 0, 100),
              (_RANGE, "pitch_range", pitch_range, 0, 100),
              (_VOLUME, "amplitude", amplitude, 0, 200), (_WORDGAP, "word_gap", word_gap, 0, 1000))
    for _, name, value, lo, hi in params:
      if not lo <= int(value) <= hi:
        raise ValueError(f"voice {voice!r}: {name}={value} outside [{lo}, {hi}]")
    with self._lock:
      lib = _bind(ctypes.CDLL(self._lib_path, mode=os.RTLD_LOCAL))
      chunks: list[np.ndarray] = []

      def on_audio(wav, n, events):
        if n > 0:
          chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = go on

      callback = _CALLBACK(on_audio)
      try:
        rate_hz = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self._folder.encode(),
                                        _INITIALIZE_DONT_EXIT)
        if rate_hz != SAMPLE_RATE:
          raise RuntimeError(f"espeak_Initialize({self._folder!r}) returned {rate_hz}; "
                             f"expected the sample rate {SAMPLE_RATE}")
        lib.espeak_SetSynthCallback(callback)
        if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
          raise VoiceNotFound(f"espeak_SetVoiceByName({voice!r}) failed")
        for code, _, value, _, _ in params:
          lib.espeak_SetParameter(code, int(value), 0)
        lib.espeak_ng_SetRandSeed(int(seed))
        data = text.encode("utf-8") + b"\0"
        err = lib.espeak_Synth(data, len(data), 0, 0, 0, _CHARS_UTF8, None, None)
        if err != _EE_OK:
          raise RuntimeError(f"espeak_Synth failed (code {err}) for voice {voice!r}")
        lib.espeak_Synchronize()
        lib.espeak_Terminate()
      finally:
        handle = lib._handle
        del lib
        _ctypes.dlclose(handle)  # unmaps the copy: the next call starts from fresh globals
    if not chunks:
      raise RuntimeError(f"espeak-ng produced no audio for voice {voice!r}, text {text[:60]!r}")
    return np.concatenate(chunks).astype(np.float32) / np.float32(32768.0)


def _language_names(data_path: str) -> set[str]:
  """Names ``espeak_SetVoiceByName`` accepts for languages: the files under ``lang/``."""
  names = set()
  for _, _, files in os.walk(os.path.join(data_path, "lang")):
    names.update(f.lower() for f in files)
  return names


def _assemble_data(shipped: str, dest: str, extra_variants: Mapping[str, str]):
  """A private ``espeak-ng-data``: symlinks to the wheel's 19 MB plus our variant files."""
  vdir = os.path.join(dest, "voices", "!v")
  os.makedirs(vdir)
  for entry in os.listdir(shipped):
    if entry != "voices":
      os.symlink(os.path.join(shipped, entry), os.path.join(dest, entry))
  shipped_v = os.path.join(shipped, "voices", "!v")
  for entry in os.listdir(shipped_v):
    os.symlink(os.path.join(shipped_v, entry), os.path.join(vdir, entry))
  for name, text in extra_variants.items():
    if os.path.exists(os.path.join(vdir, name)):
      raise ValueError(f"extra variant {name!r} would shadow a shipped espeak-ng variant")
    with open(os.path.join(vdir, name), "w") as f:
      f.write(text)

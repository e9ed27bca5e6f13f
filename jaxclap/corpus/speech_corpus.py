"""The embedded speech corpus: thousands of espeak-ng clips whose captions say true things.

A new user has no data and no network; ``build()`` makes a corpus on the machine in about
a minute and caches it as a jaxclap TFDS dataset (``records.write_tfds``):

  python -m jaxclap.corpus.speech_corpus [--data_dir DIR] [--seed N] [--scale X]

Speakers ("voices") are espeak-ng language voices x variants (``SPEAKERS``): native English
accents, other languages reading their own text (Faker's per-locale word lists), and
foreign voices reading English (a German voice reading English = a German accent). Per
clip, pitch, speaking rate and loudness are drawn independently at three levels with wide
gaps between them, and ~30% of clips join two segments that differ in one of them (the
speaker speeds up, the pitch rises, it gets quieter...). Labels are TRUE OF THE AUDIO:

  pitch_level     median F0 of the clip (YIN over the loud, voiced frames, searched in
                  the speaker group's range) in semitones relative to the group's reference
                  (man 100 Hz, woman 195 Hz, child 300 Hz): low < -2 st <= mid <= +2 st <
                  high. Settings aim at [-5.5,-3.5], [-1,1], [3.5,5.5] st through a
                  per-variant calibration, then are re-aimed until the measured median is
                  in [-7,-3], [-1.2,1.2], [3,7]: high and low clips sit >= 6 st apart.
                  "High-pitched" means high for a man / woman / child, as people use the
                  word. Modal voices only: whispers have no F0, and the creaky/shaky
                  variants' flutter leaves it ill-defined (pYIN calls them unvoiced).
  rate_level      espeak's rate (phone durations): slow 115-140, normal 165-190, fast
                  235-275 words/min (x0.95-1.05 per speaker), i.e. fast ~2x slow.
  loudness_level  active-speech RMS of the stored clip (frames within 25 dB of the
                  loudest): quiet < -31 dBFS <= normal <= -22.5 < loud; segments are gained
                  to [-38,-34], [-28,-25], [-20,-17] dBFS (loud vs quiet >= 14 dB), peaks
                  soft-limited, never clipped. A pipeline that normalises gain erases it.
  quality         whispered (whisper/whisperf variants), creaky (croak, croakf, croakm),
                  shaky (grandma*, grandpa*: strong pitch tremor), else modal.
  gender, age_group   from the variant (``VARIANTS``): m*/croak*/whisper/grandpa* male,
                  f*/whisperf/grandma*/croakf female; grandma*/grandpa* elderly; child*
                  child, without gender; others young adult. The child voices and the
                  second timbre of each rare class are our own variant files
                  (``EXTRA_VARIANTS``, written into a private copy of the data folder):
                  espeak's recipe for the class applied to another voice's formants.

Splits: test speakers never appear in train (held-out variants m2, m6, f4, held-out accents
and languages, and new voice x variant pairs) and test sentences never appear in train
(SLAP's out-of-distribution test); validation = train speakers, unseen sentences. Checked
at build time. ``BINARY_TASKS`` are the zero-shot antonym tasks; ``CHANGE_TASKS`` the
within-clip ones (narrated by fine captions).

Captions (``captions.py``): 4 global captions per clip in different styles, and 2 fine
captions narrating the change, or the steady delivery of a clip without one.

Determinism: the plan (every clip's text and settings) is computed from the seed alone in
the main process; espeak synthesis is a pure function of its arguments (see ``espeak``),
so the corpus is byte-identical for any ``num_workers`` and run (and across machines with
the same Faker, numpy, librosa and soxr). The cache lives at
``<data_dir>/jaxclap_speech/1.<seed>.<scale in thousandths>`` and is reused only if its
marker holds the same plan hash (which also covers this code, captions.py and espeak.py).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from typing import NamedTuple

import numpy as np

from jaxclap.corpus import captions as captions_lib
from jaxclap.corpus import records

NAME = "jaxclap_speech"
SAMPLE_RATE = 16000
MAX_SECONDS = 12.0
MAX_CAPTION_CHARS = 400
_MARKER = "jaxclap_plan.json"
_FORMAT_MAJOR = 1  # bump when the record layout changes; the plan hash covers the rest
_CHUNK = 32  # clips per task sent to a worker: only load balancing, not the result

# ---------------------------------------------------------------------------- voices


class Variant(NamedTuple):
  gender: str | None
  age_group: str
  quality: str
  f0_hz: float | None  # median F0 with pitch=50, range=50 (measured, en-us)


VARIANTS = {
    "m1": Variant("male", "young adult", "modal", 92.7),
    "m2": Variant("male", "young adult", "modal", 100.6),
    "m3": Variant("male", "young adult", "modal", 104.2),
    "m4": Variant("male", "young adult", "modal", 94.1),
    "m5": Variant("male", "young adult", "modal", 103.5),
    "m6": Variant("male", "young adult", "modal", 100.2),
    "m7": Variant("male", "young adult", "modal", 105.4),
    "m8": Variant("male", "young adult", "modal", 85.1),
    "f1": Variant("female", "young adult", "modal", 178.8),
    "f2": Variant("female", "young adult", "modal", 193.5),
    "f3": Variant("female", "young adult", "modal", 208.9),
    "f4": Variant("female", "young adult", "modal", 178.3),
    "f5": Variant("female", "young adult", "modal", 203.7),
    # More of espeak's own adult voices (measured the same way): a model that has heard
    # few timbres takes an unheard one for a child, a creaky or a whispering voice.
    "Andy": Variant("male", "young adult", "modal", 96.4),
    "Denis": Variant("male", "young adult", "modal", 99.7),
    "gustave": Variant("male", "young adult", "modal", 107.5),
    "robert": Variant("male", "young adult", "modal", 98.2),
    "travis": Variant("male", "young adult", "modal", 103.1),
    "victor": Variant("male", "young adult", "modal", 95.8),
    "steph": Variant("female", "young adult", "modal", 185.3),
    "belinda": Variant("female", "young adult", "modal", 230.2),
    "Alicia": Variant("female", "young adult", "modal", 253.6),
    "Andrea": Variant("female", "young adult", "modal", 246.6),
    "croak": Variant("male", "young adult", "creaky", 107.4),
    "grandpa": Variant("male", "elderly", "shaky", 106.9),
    "grandma": Variant("female", "elderly", "shaky", 196.9),
    "whisper": Variant("male", "young adult", "whispered", None),
    "whisperf": Variant("female", "young adult", "whispered", None),
    "child": Variant(None, "child", "modal", 297.9),
    # Composed (EXTRA_VARIANTS): each rare class is heard in several timbres, so that a
    # model learns the creak, the tremor or the child's voice rather than who has it.
    "croakf": Variant("female", "young adult", "creaky", 172.2),
    "croakm": Variant("male", "young adult", "creaky", 94.6),
    "grandpa2": Variant("male", "elderly", "shaky", 97.3),
    "grandma2": Variant("female", "elderly", "shaky", 201.4),
    "child2": Variant(None, "child", "modal", 313.4),
    "child3": Variant(None, "child", "modal", 293.1),
}

# Variant files written into a private copy of espeak's data folder (espeak.Synthesizer).
EXTRA_VARIANTS = {
# A child: F0 ~300 Hz and formants scaled up ~30% (shorter vocal tract than the f* voices).
"child": """language variant
name child
pitch 230 330
flutter 8
roughness 2
formant 0 115 80 150
formant 1 135 80 160
formant 2 140 70 150
formant 3 135 70 150
formant 4 130 80 150
formant 5 125 80 150
formant 6 120 70 150
formant 7 115 70 150
formant 8 115 70 150
stressAdd 0 0 -10 -10 0 0 10 40
""",
# croak's recipe (flutter 20, a damped lowest formant) on f2's formants, pitched lower.
"croakf": """language variant
name croakf
gender female
pitch 130 190
flutter 20
roughness 3
formant 0 100 80 110
formant 1 110 80 160
formant 2 110 70 150
formant 3 110 70 150
formant 4 115 80 150
formant 5 115 80 150
formant 6 110 70 150
formant 7 110 70 150
formant 8 110 70 150
""",
# croak's recipe on m7's formants and voicing.
"croakm": """language variant
name croakm
gender male
pitch 70 110
flutter 20
formant 0 100 80 110
formant 1 100 90 80
formant 2 100 70 90
formant 3 100 60 90
formant 4 100 60 90
formant 5 75 50 90
formant 6 90 50 100
formant 7 100 50 100
formant 8 100 50 100
voicing 155
""",
# Children with other vocal tracts: f3's formants x ~1.12, and f5's x ~1.25.
"child2": """language variant
name child2
pitch 240 340
formant 0 118 80 150
formant 1 135 75 150
formant 2 150 70 150
formant 3 140 80 150
formant 4 140 80 150
formant 5 140 80 150
formant 6 135 70 150
formant 7 125 70 150
formant 8 125 70 150
stressAmp 18 18 20 20 20 20 20 20
""",
"child3": """language variant
name child3
pitch 220 320
flutter 4
formant 0 130 80 150
formant 1 138 80 160
formant 2 138 70 150
formant 3 138 70 150
formant 4 144 80 200
formant 5 144 80 100
formant 6 138 70 150
formant 7 138 70 100
formant 8 138 70 150
stressAdd 0 0 -10 -10 0 0 10 40
""",
# grandpa's recipe (flutter 20, no formants above the 6th, flat intonation) on m3.
"grandpa2": """language variant
name grandpa2
gender male
pitch 75 115
flutter 20
formant 0 100 100 100
formant 1  96  97 100
formant 2  96  97 100
formant 3  96 103 100
formant 4  95 103 100
formant 5  95 103 100
formant 6 10 10 10
formant 7 10 10 10
formant 8 10 10 10
intonation 1
""",
# grandma's recipe (flutter 20, compressed upper formants, weak voicing) on f3.
"grandma2": """language variant
name grandma2
gender female
pitch 125 225
flutter 20
formant 0 105  80 150
formant 1 120  75 150
formant 2 125  90 130
formant 3 80 80 80
formant 4 60 60 60
formant 5 90 90 90
formant 6 10 10 10
formant 7 10 10 10
formant 8 20 20 20
voicing 50
"""}

# espeak language voice -> (language, accent when reading English, Faker locale or None).
LANG_VOICES = {
    "en-us": ("English", "American", "en_US"),
    "en": ("English", "British", "en_US"),
    "en-gb-scotland": ("English", "Scottish", "en_US"),
    "en-gb-x-rp": ("English", "Received Pronunciation", "en_US"),
    "en-us-nyc": ("English", "New York", "en_US"),
    "en-029": ("English", "Caribbean", "en_US"),
    "en-gb-x-gbclan": ("English", "Lancashire", "en_US"),
    "en-gb-x-gbcwmd": ("English", "West Midlands", "en_US"),
    "de": ("German", "German", "de_DE"),
    "fr": ("French", "French", "fr_FR"),
    "es": ("Spanish", "Spanish", "es_ES"),
    "it": ("Italian", "Italian", "it_IT"),
    "nl": ("Dutch", "Dutch", "nl_NL"),
    "pl": ("Polish", "Polish", "pl_PL"),
    "pt": ("Portuguese", "Portuguese", None),  # Faker has no Portuguese lorem: English only
    "cs": ("Czech", "Czech", "cs_CZ"),
    "da": ("Danish", "Danish", "da_DK"),
    "ru": ("Russian", "Russian", "ru_RU"),
    "el": ("Greek", "Greek", "el_GR"),
    "uk": ("Ukrainian", "Ukrainian", "uk_UA"),
}
_LOCALES = {lang: loc for lang, _, loc in LANG_VOICES.values() if loc}
_LOCALES["English"] = "en_US"
# Seconds per word relative to 60/wpm (measured): sizes sentences to ~2.5-5 s.
_WORD_LENGTH = {"English": 1.1, "German": 0.95, "French": 0.95, "Spanish": 1.15,
                "Italian": 1.4, "Dutch": 1.1, "Polish": 1.4, "Czech": 1.4, "Danish": 1.1,
                "Russian": 1.25, "Greek": 1.25, "Ukrainian": 1.8}

# (split, language voice, variant, text: "en" = English, "own" = the voice's language).
# Each language and each foreign accent is spoken by several variants (3-4 per language,
# 2-3 per accent), and every variant speaks several of them: with one or two voices per
# language a model tells languages apart by who is speaking, which does not carry over to
# new voices. Test speakers use held-out variants (m2, m6, f4), held-out native accents
# (Lancashire, West Midlands), a held-out foreign accent (Portuguese) and languages
# (Danish, Ukrainian), and new voice x variant pairs for the special variants (each
# creaky, shaky and child variant is spoken by 2 train and 1 test voice).
SPEAKERS = [
    ("train", "en-us", "m1", "en"), ("train", "en-us", "f1", "en"),
    ("train", "en-us", "f5", "en"), ("train", "en-us", "grandpa", "en"),
    ("train", "en-us", "whisperf", "en"), ("train", "en-us", "child", "en"),
    ("train", "en", "m4", "en"), ("train", "en", "f2", "en"),
    ("train", "en", "grandma", "en"), ("train", "en", "croak", "en"),
    ("train", "en-gb-scotland", "m7", "en"), ("train", "en-gb-scotland", "f3", "en"),
    ("train", "en-gb-scotland", "whisper", "en"),
    ("train", "en-gb-x-rp", "m3", "en"), ("train", "en-gb-x-rp", "f5", "en"),
    ("train", "en-us-nyc", "m5", "en"), ("train", "en-us-nyc", "f1", "en"),
    ("train", "en-029", "m8", "en"), ("train", "en-029", "f2", "en"),
    ("train", "en-029", "child", "en"),
    ("train", "de", "m1", "en"), ("train", "de", "f3", "en"), ("train", "de", "croak", "en"),
    ("train", "fr", "m4", "en"), ("train", "fr", "f5", "en"), ("train", "fr", "whisper", "en"),
    ("train", "es", "m7", "en"), ("train", "es", "f1", "en"), ("train", "es", "m3", "en"),
    ("train", "it", "m3", "en"), ("train", "it", "f2", "en"), ("train", "it", "m8", "en"),
    ("train", "nl", "m5", "en"), ("train", "pl", "f5", "en"), ("train", "ru", "m4", "en"),
    ("train", "de", "m8", "own"), ("train", "de", "f1", "own"), ("train", "de", "m4", "own"),
    ("train", "fr", "m3", "own"), ("train", "fr", "f2", "own"), ("train", "fr", "m7", "own"),
    ("train", "es", "m5", "own"), ("train", "es", "f3", "own"), ("train", "es", "m1", "own"),
    ("train", "it", "f5", "own"), ("train", "it", "grandpa", "own"), ("train", "it", "m8", "own"),
    ("train", "nl", "m4", "own"), ("train", "nl", "f3", "own"), ("train", "nl", "m1", "own"),
    ("train", "pl", "m1", "own"), ("train", "pl", "grandma", "own"), ("train", "pl", "f2", "own"),
    ("train", "ru", "m7", "own"), ("train", "ru", "f1", "own"), ("train", "ru", "whisperf", "own"),
    ("train", "cs", "f2", "own"), ("train", "cs", "m5", "own"),
    ("train", "el", "m5", "own"), ("train", "el", "f3", "own"),
    ("train", "en-gb-x-rp", "croakf", "en"), ("train", "es", "croakf", "own"),
    ("train", "en-us-nyc", "croakm", "en"), ("train", "it", "croakm", "en"),
    ("train", "en", "child2", "en"), ("train", "de", "child2", "own"),
    ("train", "en-us-nyc", "child3", "en"), ("train", "fr", "child3", "en"),
    ("train", "en-029", "grandpa2", "en"), ("train", "cs", "grandpa2", "own"),
    ("train", "en-gb-x-rp", "grandma2", "en"), ("train", "ru", "grandma2", "en"),
    ("train", "nl", "whisper", "own"), ("train", "en-gb-x-rp", "whisperf", "en"),
    ("train", "en-us", "Andy", "en"), ("train", "fr", "Andy", "own"),
    ("train", "en-gb-scotland", "Denis", "en"), ("train", "pl", "Denis", "en"),
    ("train", "en-029", "gustave", "en"), ("train", "cs", "gustave", "own"),
    ("train", "en", "robert", "en"), ("train", "el", "robert", "own"),
    ("train", "en-us-nyc", "travis", "en"), ("train", "it", "victor", "own"),
    ("train", "en-gb-x-rp", "steph", "en"), ("train", "nl", "steph", "own"),
    ("train", "en", "belinda", "en"), ("train", "ru", "belinda", "own"),
    ("train", "en-us", "Alicia", "en"), ("train", "de", "Alicia", "en"),
    ("train", "en-gb-scotland", "Andrea", "en"), ("train", "es", "Andrea", "own"),
    ("test", "en-gb-x-gbclan", "m6", "en"), ("test", "en-gb-x-gbclan", "f4", "en"),
    ("test", "en-gb-x-gbclan", "grandpa", "en"),
    ("test", "en-gb-x-gbcwmd", "m2", "en"), ("test", "en-gb-x-gbcwmd", "f4", "en"),
    ("test", "en-gb-x-gbcwmd", "croak", "en"),
    ("test", "en-us", "m6", "en"), ("test", "en-us-nyc", "f4", "en"),
    ("test", "en-us-nyc", "grandma", "en"), ("test", "en-029", "whisper", "en"),
    ("test", "en-gb-scotland", "child", "en"),
    ("test", "de", "m2", "en"), ("test", "es", "m6", "en"), ("test", "pt", "f4", "en"),
    ("test", "fr", "f4", "own"), ("test", "de", "m6", "own"), ("test", "es", "whisperf", "own"),
    ("test", "da", "f4", "own"), ("test", "uk", "m2", "own"),
    ("test", "en-gb-x-gbclan", "croakf", "en"), ("test", "de", "croakm", "own"),
    ("test", "en-us", "child3", "en"), ("test", "uk", "child2", "own"),
    ("test", "en-gb-x-gbcwmd", "grandma2", "en"), ("test", "es", "grandpa2", "own"),
]

SPLIT_CLIPS = {"train": 4500, "validation": 400, "test": 700}
# Whispered, creaky, shaky-elderly and child voices are over a quarter of the train
# speakers, 6-8 per class in >= 2 timbres (~300-400 train clips per class): every speaker
# takes one turn per round, as in the test split. (With 1-2 voices per class, even
# spoken twice as often, a model learns those voices instead of the class.)

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
_LEVEL_WEIGHTS = (0.4, 0.2, 0.4)  # extremes feed the binary tasks; mid keeps the scale
CHANGE_FRACTION = 0.3
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


class BinaryTask(NamedTuple):
  """A zero-shot antonym task: clips with ``metadata[key]`` in ``positive`` / ``negative``
  (others are excluded), scored against two prompts (SLAP: antonyms, never negations).
  A prompt may be a tuple of phrasings: a class that is a union ("a foreign language") is
  described by its generic phrase and by each member, and the embeddings are averaged."""
  key: str
  positive: tuple[str, ...]
  negative: tuple[str, ...]
  positive_prompt: str | tuple[str, ...]
  negative_prompt: str | tuple[str, ...]


_OTHER_LANGUAGES = tuple(sorted({v[0] for v in LANG_VOICES.values()} - {"English"}))
_NATIVE_ACCENTS = tuple(sorted(v[1] for v in LANG_VOICES.values() if v[0] == "English"))
_FOREIGN_ACCENTS = tuple(sorted(v[1] for v in LANG_VOICES.values() if v[0] != "English"))

BINARY_TASKS = collections.OrderedDict([
    ("gender", BinaryTask("gender", ("male",), ("female",),
                          "A man speaking.", "A woman speaking.")),
    ("pitch", BinaryTask("pitch_level", ("high",), ("low",),
                         "A high-pitched voice.", "A low-pitched voice.")),
    ("rate", BinaryTask("rate_level", ("fast",), ("slow",),
                        "Someone speaking quickly.", "Someone speaking slowly.")),
    ("loudness", BinaryTask("loudness_level", ("loud",), ("quiet",),
                            "Someone speaking loudly.", "Someone speaking quietly.")),
    ("whisper", BinaryTask("quality", ("whispered",), ("modal",),
                           "Someone speaking in a whisper.", "Someone speaking in a clear voice.")),
    ("creaky", BinaryTask("quality", ("creaky",), ("modal",),
                          "Someone speaking in a creaky voice.", "Someone speaking with a smooth voice.")),
    ("elderly", BinaryTask("age_group", ("elderly",), ("young adult",),
                           "An elderly person speaking.", "A young adult speaking.")),
    ("child", BinaryTask("age_group", ("child",), ("young adult", "elderly"),
                         "A child speaking.", "An adult speaking.")),
    ("accent", BinaryTask("english_accent", ("native",), ("foreign",),
                          ("A native English speaker.",) + tuple(
                              f"A native English speaker with {captions_lib._a(a)} accent." for a in _NATIVE_ACCENTS),
                          ("English spoken with a foreign accent.",) + tuple(
                              f"English spoken with {captions_lib._a(a)} accent." for a in _FOREIGN_ACCENTS))),
    ("language", BinaryTask("language", ("English",), _OTHER_LANGUAGES,
                            "Someone speaking English.",
                            ("Someone speaking a foreign language.",) + tuple(
                                f"Someone speaking {lang}." for lang in _OTHER_LANGUAGES))),
])

# Within-clip changes: harder (the order matters), scored on fine captions' wording.
CHANGE_TASKS = collections.OrderedDict([
    ("speed_change", BinaryTask("change", ("speeds_up",), ("slows_down",),
                                "The speaker starts slowly and then speeds up.",
                                "The speaker starts fast and then slows down.")),
    ("pitch_change", BinaryTask("change", ("pitch_rises",), ("pitch_falls",),
                                "The voice starts low-pitched and then rises to a high pitch.",
                                "The voice starts high-pitched and then drops to a low pitch.")),
    ("volume_change", BinaryTask("change", ("gets_louder",), ("gets_quieter",),
                                 "The speaker starts quietly and then gets loud.",
                                 "The speaker starts loudly and then gets quiet.")),
])


def task_label(metadata: dict, task: BinaryTask) -> int | None:
  """1 (positive), 0 (negative) or None (the clip is not part of the task)."""
  value = metadata.get(task.key)
  return 1 if value in task.positive else 0 if value in task.negative else None


# ---------------------------------------------------------------------------- the plan


def speakers(seed: int = 0) -> list[dict]:
  """``SPEAKERS`` as dicts: voice, variant, labels, and a per-seed pitch range and rate."""
  rng = random.Random(f"speakers-{seed}")
  out = []
  for i, (split, voice, variant, text) in enumerate(SPEAKERS):
    language, accent, locale = LANG_VOICES[voice]
    v = VARIANTS[variant]
    english = text == "en"
    assert english or locale, f"{voice} has no Faker locale to read its own language from"
    native = english and language == "English"
    out.append({
        "voice_id": f"spk{i:02d}", "split": split, "espeak_voice": voice,
        "espeak_variant": variant, "gender": v.gender, "age_group": v.age_group,
        "quality": v.quality,
        "language": "English" if english else language,
        "accent": accent if english else None,
        "english_accent": ("native" if native else "foreign") if english else None,
        "pitch_range": rng.randint(25, 55), "rate_scale": round(rng.uniform(0.95, 1.05), 3),
    })
  return out


def _pitch_param(variant: str, target_st: float, pitch_range: int) -> int:
  """The espeak pitch setting (0-100) whose median F0 is ``target_st`` from the reference."""
  v = VARIANTS[variant]
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


class _Sentences:
  """Unique Faker sentences per (split, language); never repeated anywhere in the corpus."""

  def __init__(self, seed: int):
    self.seed, self.fakers, self.used = seed, {}, set()

  def __call__(self, split: str, language: str, n_words: int) -> str:
    from faker import Faker

    locale = _LOCALES[language]
    key = (split, locale)
    if key not in self.fakers:
      fake = Faker(locale)
      fake.seed_instance(f"{self.seed}-{split}-{locale}")
      self.fakers[key] = fake
    for _ in range(1000):
      text = self.fakers[key].sentence(nb_words=n_words, variable_nb_words=False)
      if text not in self.used:
        self.used.add(text)
        return text
    raise RuntimeError(f"could not draw a new {language} sentence of {n_words} words")


def _level(rng: random.Random, levels: tuple[str, str, str]) -> str:
  return rng.choices(levels, weights=_LEVEL_WEIGHTS)[0]


def _clip_counts(scale: float) -> dict[str, int]:
  return {s: max(3, int(round(n * scale))) for s, n in SPLIT_CLIPS.items()}


def _segments(spk: dict, levels: dict, change: str | None, rng: random.Random) -> list[dict]:
  """Settings of the clip's one or two segments (no text yet) for the given levels."""
  seg_levels = [dict(levels)]
  if change:
    dim, first, second = CHANGES[change]
    seg_levels = [dict(levels, **{dim: first}), dict(levels, **{dim: second})]
  segments = []
  for lv in seg_levels:
    wpm = int(round(rng.uniform(*RATE_WPM[lv["rate"]]) * spk["rate_scale"]))
    if spk["quality"] == "whispered":  # the setting barely changes a whisper
      target, target_st, pitch = None, None, 50
    else:
      target = lv["pitch"]
      target_st = round(rng.uniform(*PITCH_TARGET_ST[target]), 2)
      pitch = _pitch_param(spk["espeak_variant"], target_st, spk["pitch_range"])
    segments.append({
        "rate_level": lv["rate"], "rate_wpm": wpm,
        "pitch_target": target, "pitch_target_st": target_st, "pitch": pitch,
        "loudness_target": lv["loudness"],
        "loudness_target_db": round(rng.uniform(*LOUDNESS_TARGET_DB[lv["loudness"]]), 2),
    })
  return segments


def _clip(clip_id, split, spk, text, segments, change, rng) -> dict:
  tokens = text.split()
  if change:
    half = len(tokens) // 2
    segments[0]["text"], segments[1]["text"] = " ".join(tokens[:half]), " ".join(tokens[half:])
  else:
    segments[0]["text"] = text
  return {"id": clip_id, "split": split, "speaker": spk, "text": text, "n_words": len(tokens),
          "change": change, "segments": segments, "seed": rng.getrandbits(31),
          "pause_s": round(rng.uniform(0.2, 0.35), 3)}


def clip_spec(speaker: dict, text: str, *, pitch: str = "mid", rate: str = "normal",
              loudness: str = "normal", change: str | None = None, seed: int = 0,
              clip_id: str = "clip", split: str = "train") -> dict:
  """A clip outside the plan (demos, tests): ``render(clip_spec(speakers()[0], "Hello
  there.", pitch="high"))`` -> (id, record). Levels as in the corpus; ``change`` a key
  of ``CHANGES`` (it overrides the level of its dimension)."""
  rng = random.Random(seed)
  segments = _segments(speaker, {"pitch": pitch, "rate": rate, "loudness": loudness},
                       change, rng)
  return _clip(clip_id, split, speaker, text, segments, change, rng)


def make_plan(seed: int = 0, scale: float = 1.0) -> list[dict]:
  """Every clip's speaker, text and settings, from the seed alone (JSON-serialisable)."""
  sentences = _Sentences(seed)
  plan = []
  for split, n in _clip_counts(scale).items():  # train first: its sentences are drawn first
    rng = random.Random(f"plan-{seed}-{split}")
    pool = [s for s in speakers(seed) if s["split"] == ("test" if split == "test" else "train")]
    order: list[dict] = []
    for i in range(n):
      if not order:  # every speaker once per round, in a fresh order each round
        order = pool[:]
        rng.shuffle(order)
      spk = order.pop()
      levels = {"pitch": _level(rng, ("low", "mid", "high")),
                "rate": _level(rng, ("slow", "normal", "fast")),
                "loudness": _level(rng, ("quiet", "normal", "loud"))}
      change = None
      if rng.random() < CHANGE_FRACTION:
        pitched = spk["quality"] in PITCHED_QUALITIES
        change = rng.choice([c for c, (dim, _, _) in CHANGES.items() if pitched or dim != "pitch"])
      segments = _segments(spk, levels, change, rng)
      wpm = sum(s["rate_wpm"] for s in segments) / len(segments)
      words = round(rng.uniform(2.5, 5.0) * wpm / 60 / _WORD_LENGTH[spk["language"]])
      text = sentences(split, spk["language"], min(16, max(6 if change else 4, words)))
      plan.append(_clip(f"{split}-{i:05d}", split, spk, text, segments, change, rng))
  check_plan(plan)
  return plan


def check_plan(plan: list[dict]):
  """Asserts the split contract: test speakers and sentences are never seen in training."""
  by = collections.defaultdict(lambda: (set(), set(), set()))
  for clip in plan:
    ids, pairs, texts = by[clip["split"]]
    spk = clip["speaker"]
    ids.add(spk["voice_id"])
    pairs.add((spk["espeak_voice"], spk["espeak_variant"], spk["language"]))
    texts.add(clip["text"])
  train, val, test = by["train"], by["validation"], by["test"]
  assert not train[0] & test[0], f"test speakers in train: {sorted(train[0] & test[0])}"
  assert not train[1] & test[1], f"test voice x variant pairs in train: {train[1] & test[1]}"
  assert not train[2] & test[2], f"{len(train[2] & test[2])} test sentences in train"
  assert not train[2] & val[2], f"{len(train[2] & val[2])} validation sentences in train"
  assert val[0] <= train[0], f"validation speakers missing from train: {val[0] - train[0]}"
  assert len({c["id"] for c in plan}) == len(plan), "clip ids are not unique"


def plan_hash(plan: list[dict]) -> str:
  """Covers the plan and the code that renders it, so a stale cache is never reused."""
  h = hashlib.sha256(json.dumps(plan, sort_keys=True).encode())
  for module in (__file__, captions_lib.__file__, os.path.join(os.path.dirname(__file__), "espeak.py")):
    with open(module, "rb") as f:
      h.update(f.read())
  h.update(f"{SAMPLE_RATE}".encode())
  return h.hexdigest()[:16]


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
    _SYNTH = espeak.Synthesizer(EXTRA_VARIANTS)
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


def _init_worker(scratch: str):
  import tempfile
  tempfile.tempdir = scratch


def _render_chunk(chunk: list[dict]) -> list[tuple[str, dict]]:
  return [render(clip) for clip in chunk]


# ---------------------------------------------------------------------------- build


def default_data_dir() -> str:
  return os.environ.get("JAXCLAP_DATA_DIR") or os.path.expanduser("~/.cache/jaxclap/datasets")


def _version(seed: int, scale: float) -> str:
  if not isinstance(seed, int) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}")
  thousandths = round(scale * 1000)
  if scale <= 0 or abs(scale * 1000 - thousandths) > 1e-6:
    raise ValueError(f"scale must be a positive multiple of 0.001, got {scale!r}")
  return f"{_FORMAT_MAJOR}.{seed}.{thousandths}"


def _is_complete(path: str, digest: str) -> bool:
  try:
    with open(os.path.join(path, _MARKER)) as f:
      marker = json.load(f)
  except (OSError, ValueError):
    return False
  return marker.get("plan_hash") == digest and os.path.exists(os.path.join(path, "dataset_info.json"))


def build(data_dir: str | None = None, *, seed: int = 0, scale: float = 1.0,
          num_workers: int = 2) -> str:
  """Builds the corpus (or reuses a complete build of the same plan); returns its dir.

  num_workers: synthesis processes ('spawn'); 0 renders in this process. The result does
  not depend on it.
  """
  data_dir = data_dir or default_data_dir()
  path = os.path.join(data_dir, NAME, _version(seed, scale))
  plan = make_plan(seed, scale)
  digest = plan_hash(plan)
  if _is_complete(path, digest):
    logging.info("reusing %s (plan %s)", path, digest)
    return path
  if os.path.exists(path):  # an interrupted build, or one from other code: ours to replace
    logging.warning("replacing %s: incomplete or built from another plan", path)
    shutil.rmtree(path)

  by_split = collections.OrderedDict((s, [c for c in plan if c["split"] == s]) for s in SPLIT_CLIPS)
  pool, scratch = None, None
  if num_workers > 0:
    import multiprocessing
    import tempfile
    # Workers' espeak copies live here, removed below even if the workers are killed.
    scratch = tempfile.mkdtemp(prefix="jaxclap-corpus-")
    pool = multiprocessing.get_context("spawn").Pool(num_workers, initializer=_init_worker,
                                                     initargs=(scratch,))

  def generator(clips):
    chunks = [clips[i:i + _CHUNK] for i in range(0, len(clips), _CHUNK)]
    results = pool.imap(_render_chunk, chunks) if pool else map(_render_chunk, chunks)
    for rendered in results:
      yield from rendered

  try:
    out = records.write_tfds(
        NAME, {s: (lambda c=c: generator(c)) for s, c in by_split.items()}, data_dir,
        description=f"jaxclap embedded espeak-ng speech corpus (seed={seed}, "
                    f"scale={scale}, plan {digest})", version=_version(seed, scale))
  finally:
    if pool:
      pool.terminate()
      pool.join()
      shutil.rmtree(scratch, ignore_errors=True)
  with open(os.path.join(out, _MARKER), "w") as f:
    json.dump({"plan_hash": digest, "seed": seed, "scale": scale, "clips": len(plan),
               "engine": "espeak-ng 1.52"}, f, indent=1)
  return out


# ---------------------------------------------------------------------------- summary


def iter_metadata(path: str, split: str):
  """(metadata, seconds) for every clip of a split, without decoding audio to float."""
  source = records.open_split(path, split)
  for i in range(len(source)):
    r = source[i]
    meta = r["metadata"]
    yield json.loads(meta.decode() if isinstance(meta, bytes) else meta), len(r["audio"]) / int(r["sample_rate"])


def summary(path: str) -> str:
  """Clips, hours, voices and attribute balance per split, as a text table."""
  lines = [f"{path}"]
  for split in SPLIT_CLIPS:
    metas, seconds = [], 0.0
    for meta, s in iter_metadata(path, split):
      metas.append(meta)
      seconds += s
    voices = sorted({m["voice_id"] for m in metas})
    lines.append(f"\n[{split}] {len(metas)} clips, {seconds / 3600:.2f} h, "
                 f"{len(voices)} voices, mean {seconds / max(1, len(metas)):.1f} s/clip")
    name_values = lambda v: "+".join(v) if len(v) <= 2 else f"{len(v)} values"
    for name, task in list(BINARY_TASKS.items()) + list(CHANGE_TASKS.items()):
      labels = collections.Counter(task_label(m, task) for m in metas)
      lines.append(f"  {name:14s} {name_values(task.positive):>12s} {labels[1]:5d}  vs "
                   f"{name_values(task.negative):<20s} {labels[0]:5d}  (excluded {labels[None]})")
    for key in ("language", "accent", "change", "quality", "age_group"):
      counts = collections.Counter(str(m.get(key)) for m in metas)
      lines.append(f"  {key:14s} " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m jaxclap.corpus.speech_corpus",
      description="Build (or reuse) the embedded espeak-ng speech corpus and print its summary.")
  parser.add_argument("--data_dir", default=None,
                      help="where datasets live (default: $JAXCLAP_DATA_DIR, else "
                           "~/.cache/jaxclap/datasets); the corpus goes to "
                           "DATA_DIR/jaxclap_speech/1.<seed>.<scale*1000>")
  parser.add_argument("--seed", type=int, default=0,
                      help="plan seed: speakers' ranges, sentences, per-clip settings (default 0)")
  parser.add_argument("--scale", type=float, default=1.0,
                      help="corpus size factor, a multiple of 0.001 (1.0 = 4500 train, 400 "
                           "validation, 700 test clips; 0.02 = a few dozen)")
  parser.add_argument("--num_workers", type=int, default=2,
                      help="synthesis processes; 0 = in this process (default 2). The "
                           "corpus is identical for any value")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  start = time.time()
  path = build(args.data_dir, seed=args.seed, scale=args.scale, num_workers=args.num_workers)
  built = time.time() - start
  print(summary(path))
  print(f"\nbuilt or reused in {built:.1f} s")


if __name__ == "__main__":
  # Run the package's copy of this module so spawned workers find the same functions.
  from jaxclap.corpus.speech_corpus import main as _main
  _main()

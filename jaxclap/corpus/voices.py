"""The embedded corpus's speakers, as data: espeak-ng variants, language voices, and who
speaks in which split.

``speech_corpus`` turns these tables into a plan and ``render`` into audio; nothing here
runs espeak. A speaker is a language voice x a variant x the text it reads (``SPEAKERS``):
a German voice reading English is a German accent, reading German it is German.
``VARIANTS[v].f0_hz`` is what pitch aiming starts from (``render.pitch_param``), so a new
variant needs its F0 measured (``tests/test_corpus.py::test_variants_f0_table_is_measured``
checks every entry).
"""

from __future__ import annotations

from typing import NamedTuple


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
LOCALES = {lang: loc for lang, _, loc in LANG_VOICES.values() if loc}
LOCALES["English"] = "en_US"
# Seconds per word relative to 60/wpm (measured): sizes sentences to ~2.5-5 s.
WORD_LENGTH = {"English": 1.1, "German": 0.95, "French": 0.95, "Spanish": 1.15,
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

"""The embedded corpus's evaluation tasks, declared in every build's tasks.json.

``speech_corpus.build`` writes ``TASKS`` beside the splits (``records.write_tasks``) and
evaluators read them back with ``records.read_tasks(path)``, so nothing downstream needs
to know which corpus it is looking at. They live outside the files the corpus's plan hash
reads: a task edited here rewrites tasks.json in a cached build instead of re-synthesising
it. Nothing here changes a record.

* ``BINARY_TASKS`` (SLAP's zero-shot antonym pairs) and ``CHANGE_TASKS`` (within-clip
  changes, narrated by fine captions; shown by ``speech_corpus.summary``, not declared).
* ``MULTICLASS_TASKS`` (CLSP's zero-shot gender / age / emotion classification, weighted
  and unweighted accuracy): one prompt, or tuple of phrasings, per metadata value; clips
  whose value is not a class (None, "varies") are left out.
* ``GRADED_TASKS`` (Speech-CLAP's / CLSP's correlation with graded ratings): the cosine
  similarity of a clip to one prompt is correlated with a measured value. A clip whose
  attribute changes mid-clip has no single value and is left out.
"""

from __future__ import annotations

import collections

from jaxclap.corpus import captions as captions_lib
from jaxclap.corpus import voices
# The task types are the corpus format's (records.py), shared by every corpus.
from jaxclap.corpus.records import BinaryTask, GradedTask, MultiClassTask  # noqa: F401

_OTHER_LANGUAGES = tuple(sorted({v[0] for v in voices.LANG_VOICES.values()} - {"English"}))
_NATIVE_ACCENTS = tuple(sorted(v[1] for v in voices.LANG_VOICES.values() if v[0] == "English"))
_FOREIGN_ACCENTS = tuple(sorted(v[1] for v in voices.LANG_VOICES.values() if v[0] != "English"))

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


# Prompts use the captions' own wording (captions.py), as BINARY_TASKS' do. The classes
# are the languages / English accents some speaker of some split has (no distractor that
# no clip can be).
_LANGUAGES = tuple(sorted({"English" if text == "en" else voices.LANG_VOICES[v][0]
                           for _, v, _, text in voices.SPEAKERS}))
_ACCENTS = tuple(sorted({voices.LANG_VOICES[v][1]
                         for _, v, _, text in voices.SPEAKERS if text == "en"}))

MULTICLASS_TASKS = {
    "age_group": MultiClassTask(
        "age_group", ("child", "young adult", "elderly"),
        (("A child speaking.", "A kid speaking."), "A young adult speaking.",
         ("An elderly person speaking.", "An old person speaking."))),
    "quality": MultiClassTask(
        "quality", ("modal", "whispered", "creaky", "shaky"),
        ("Someone speaking in a clear voice.", "Someone speaking in a whisper.",
         "Someone speaking in a creaky voice.", "Someone speaking in a shaky voice.")),
    # pitch_level is None for whispered / creaky / shaky voices (no reliable F0): those
    # clips are not part of the pitch tasks.
    "pitch_level": MultiClassTask(
        "pitch_level", ("low", "mid", "high"),
        ("A low-pitched voice.", "A medium-pitched voice.", "A high-pitched voice.")),
    "rate_level": MultiClassTask(
        "rate_level", ("slow", "normal", "fast"),
        ("Someone speaking slowly.", "Someone speaking at a normal pace.",
         "Someone speaking quickly.")),
    "loudness_level": MultiClassTask(
        "loudness_level", ("quiet", "normal", "loud"),
        ("Someone speaking quietly.", "Someone speaking at a normal volume.",
         "Someone speaking loudly.")),
    # Every language of the corpus, the test split's held-out ones (Danish, Ukrainian)
    # included: zero-shot can name a class it never heard.
    "language_id": MultiClassTask(
        "language", _LANGUAGES, tuple(f"Someone speaking {lang}." for lang in _LANGUAGES)),
    # The accent of English speech (None for other languages); Portuguese, Lancashire and
    # West Midlands occur in the test split only.
    "accent_id": MultiClassTask(
        "accent", _ACCENTS,
        tuple(f"English spoken with {captions_lib._a(a)} accent." for a in _ACCENTS)),
}

GRADED_TASKS = {
    # Semitones re the speaker group's reference; None for whispered / creaky / shaky.
    "pitch_st": GradedTask("pitch_st", "A high-pitched voice.",
                           exclude=(("pitch_level", "varies"),)),
    # None when the rate changes mid-clip.
    "rate_wpm": GradedTask("rate_wpm", "Someone speaking quickly."),
    "loudness_dbfs": GradedTask("loudness_dbfs", "Someone speaking loudly.",
                                exclude=(("loudness_level", "varies"),)),
}

# What a build declares (tasks.json), in ``records.read_tasks``' shape.
TASKS = {"binary": dict(BINARY_TASKS), "multiclass": dict(MULTICLASS_TASKS),
         "graded": dict(GRADED_TASKS)}

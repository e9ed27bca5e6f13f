"""The embedded corpus's multi-class and graded evaluation tasks (``jaxclap.evaluate``).

They live here, not beside ``speech_corpus.BINARY_TASKS``, because the corpus's plan hash
covers speech_corpus.py's source: a constant added there would invalidate every cached
build. Nothing here changes the corpus.

* ``MULTICLASS_TASKS`` (CLSP's zero-shot gender / age / emotion classification, weighted
  and unweighted accuracy): one prompt, or tuple of phrasings, per metadata value; clips
  whose value is not a class (None, "varies") are left out.
* ``GRADED_TASKS`` (Speech-CLAP's / CLSP's correlation with graded ratings): the cosine
  similarity of a clip to one prompt is correlated with a measured value. A clip whose
  attribute changes mid-clip has no single value and is left out.
"""

from __future__ import annotations

from typing import NamedTuple

from jaxclap.corpus import captions as captions_lib
from jaxclap.corpus import speech_corpus


class MultiClassTask(NamedTuple):
  """``metadata[key] == classes[i]`` -> class i, described by ``prompts[i]`` (a sentence or
  a tuple of phrasings whose embeddings are averaged)."""
  key: str
  classes: tuple[str, ...]
  prompts: tuple[str | tuple[str, ...], ...]


class GradedTask(NamedTuple):
  """``metadata[key]`` (a number; None = not measured) against the similarity to
  ``prompt``, minus that to ``negative_prompt`` if one is given. Clips with
  ``metadata[k] == v`` for a pair (k, v) of ``exclude`` are left out."""
  key: str
  prompt: str | tuple[str, ...]
  negative_prompt: str | tuple[str, ...] | None = None
  exclude: tuple[tuple[str, str], ...] = ()


# Prompts use the captions' own wording (captions.py), as BINARY_TASKS' do. The classes
# are the languages / English accents some speaker of some split has (no distractor that
# no clip can be).
_LANGUAGES = tuple(sorted({"English" if text == "en" else speech_corpus.LANG_VOICES[v][0]
                           for _, v, _, text in speech_corpus.SPEAKERS}))
_ACCENTS = tuple(sorted({speech_corpus.LANG_VOICES[v][1]
                         for _, v, _, text in speech_corpus.SPEAKERS if text == "en"}))

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

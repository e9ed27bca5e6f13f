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
at build time. The evaluation tasks (``speech_tasks``: binary antonyms, multi-class,
graded) are written beside the splits as ``tasks.json`` (``records.read_tasks``).

Modules: ``voices`` (who speaks: the tables), ``render`` (one clip: synthesis, aiming,
measuring, captions), this one (the plan, the splits, the build and its cache).

Captions (``captions.py``): 4 global captions per clip in different styles, and 2 fine
captions narrating the change, or the steady delivery of a clip without one.

Determinism: the plan (every clip's text and settings) is computed from the seed alone in
the main process; espeak synthesis is a pure function of its arguments (see ``espeak``),
so the corpus is byte-identical for any ``num_workers`` and run (and across machines with
the same Faker, numpy, librosa and soxr). The cache lives at
``<data_dir>/jaxclap_speech/1.<seed>.<scale in thousandths>`` and is reused only if its
marker holds the same plan hash (which also covers the code that renders the plan: this
file, voices.py, render.py, captions.py and espeak.py). The tasks do not change a record,
so a cached build whose tasks.json is missing or out of date gets it rewritten, not rebuilt.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import logging
import os
import random
import shutil
import time

from jaxclap.corpus import captions as captions_lib
from jaxclap.corpus import records
from jaxclap.corpus import render as render_lib
from jaxclap.corpus import speech_tasks
from jaxclap.corpus import voices
# The names importers know as ``speech_corpus.X`` (the corpus's one public face).
from jaxclap.corpus.render import (CHANGES, LOUDNESS_TARGET_DB, MAX_CAPTION_CHARS,  # noqa: F401
                                   MAX_SECONDS, PITCH_REF_HZ, PITCH_TARGET_ST,
                                   PITCHED_QUALITIES, RATE_WPM, SAMPLE_RATE, render)
from jaxclap.corpus.speech_tasks import BINARY_TASKS, CHANGE_TASKS, BinaryTask, task_label  # noqa: F401
from jaxclap.corpus.voices import EXTRA_VARIANTS, LANG_VOICES, SPEAKERS, VARIANTS, Variant  # noqa: F401

NAME = "jaxclap_speech"
_MARKER = "jaxclap_plan.json"
_FORMAT_MAJOR = 1  # bump when the record layout changes; the plan hash covers the rest
_CHUNK = 32  # clips per task sent to a worker: only load balancing, not the result
# What the plan hash reads besides the plan: the code that turns a plan into records.
# speech_tasks.py is not among them: tasks are rewritten into a cached build (tasks.json).
_RENDER_SOURCES = (__file__, voices.__file__, render_lib.__file__, captions_lib.__file__,
                   os.path.join(os.path.dirname(__file__), "espeak.py"))

SPLIT_CLIPS = {"train": 4500, "validation": 400, "test": 700}
# Whispered, creaky, shaky-elderly and child voices are over a quarter of the train
# speakers, 6-8 per class in >= 2 timbres (~300-400 train clips per class): every speaker
# takes one turn per round, as in the test split. (With 1-2 voices per class, even
# spoken twice as often, a model learns those voices instead of the class.)


# ---------------------------------------------------------------------------- the plan

_LEVEL_WEIGHTS = (0.4, 0.2, 0.4)  # extremes feed the binary tasks; mid keeps the scale
CHANGE_FRACTION = 0.3


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



class _Sentences:
  """Unique Faker sentences per (split, language); never repeated anywhere in the corpus."""

  def __init__(self, seed: int):
    self.seed, self.fakers, self.used = seed, {}, set()

  def __call__(self, split: str, language: str, n_words: int) -> str:
    from faker import Faker

    locale = voices.LOCALES[language]
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
      pitch = render_lib.pitch_param(spk["espeak_variant"], target_st, spk["pitch_range"])
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
      words = round(rng.uniform(2.5, 5.0) * wpm / 60 / voices.WORD_LENGTH[spk["language"]])
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
  for module in _RENDER_SOURCES:
    with open(module, "rb") as f:
      h.update(f.read())
  h.update(f"{SAMPLE_RATE}".encode())
  return h.hexdigest()[:16]


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
    # Tasks touch no record: a build from before tasks.json, or from older tasks, is
    # brought up to date in place (a file that already says the same is not rewritten).
    records.write_tasks(path, speech_tasks.TASKS)
    return path
  if os.path.exists(path):  # an interrupted build, or one from other code: ours to replace
    logging.warning("replacing %s: incomplete or built from another plan", path)
    shutil.rmtree(path)

  by_split = collections.OrderedDict((s, [c for c in plan if c["split"] == s]) for s in SPLIT_CLIPS)
  pool, scratch = None, None
  if num_workers > 0:
    import concurrent.futures
    import multiprocessing
    import tempfile
    render_lib.warm_up()
    # Workers' espeak copies live here, removed below even if the workers are killed.
    scratch = tempfile.mkdtemp(prefix="jaxclap-corpus-")
    # concurrent.futures, not multiprocessing.Pool: a worker that dies (a signal, a
    # crash in native code) fails the build with BrokenProcessPool; Pool would replace
    # the worker and wait for its lost task forever.
    pool = concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=render_lib.init_worker, initargs=(scratch,))

  def generator(clips):
    chunks = [clips[i:i + _CHUNK] for i in range(0, len(clips), _CHUNK)]
    results = pool.map(render_lib.render_chunk, chunks) if pool else map(render_lib.render_chunk, chunks)
    try:
      for rendered in results:
        yield from rendered
    except concurrent.futures.process.BrokenProcessPool as e:
      raise RuntimeError(
          f"a corpus worker process died while rendering {clips[0]['split']} clips (it "
          f"was killed, or crashed in native code: a segmentation fault in numba's cached "
          f"code is cleared by deleting the *.nbi / *.nbc files under librosa's "
          f"__pycache__ folders); nothing was kept: re-run to rebuild, or pass "
          f"--config.corpus.num_workers=0 to render in this process") from e

  try:
    out = records.write_tfds(
        NAME, {s: (lambda c=c: generator(c)) for s, c in by_split.items()}, data_dir,
        description=f"jaxclap embedded espeak-ng speech corpus (seed={seed}, "
                    f"scale={scale}, plan {digest})", version=_version(seed, scale))
  finally:
    if pool:
      pool.shutdown(wait=True, cancel_futures=True)
      shutil.rmtree(scratch, ignore_errors=True)
  records.write_tasks(out, speech_tasks.TASKS)
  with open(os.path.join(out, _MARKER), "w") as f:  # last: it marks the build complete
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


if __name__ == "__main__":  # spawned workers import render.py, never this as __main__
  main()

r"""LibriTTS-P (Kawamura et al., 2024): speaking-style and speaker-identity prompts for
the utterances of LibriTTS-R (audiobook speech, 2,456 speakers, 585 h).

  python data/libritts_p.py --download_dir=~/downloads/LibriTTS-P \
      --audio_dir=~/downloads/LibriTTS_R --out=~/corpora

Licence: the prompts CC BY 4.0 (github.com/line/LibriTTS-P); the audio, LibriTTS-R,
CC BY 4.0 (https://www.openslr.org/141/). Obtain: `git clone
https://github.com/line/LibriTTS-P` (the metadata CSV is ~82 MB) and the LibriTTS-R
subsets you want (train_clean_100.tar.gz, ..., dev_clean.tar.gz, test_clean.tar.gz),
unpacked into one LibriTTS_R folder.

Layout expected:
  <download_dir>/data/metadata_w_style_prompt_tags_v230922.csv   header (comma-separated):
      item_name,spk_id,gender,pitch,speaking_speed,energy,content_prompt,style_prompt_key,
      raw_f0_mean,raw_f0_scale,raw_lf0_mean,raw_lf0_scale,raw_speaking_rate,
      raw_loudness_lufs,raw_loudness_mean,raw_loudness_scale,invalid
      (item_name, spk_id, style_prompt_key and invalid are required)
  <download_dir>/data/style_prompt_candidates_v230922.csv   no header, one line a key:
      <style_prompt_key>|<prompt>;<prompt>;...   key e.g. M_p-low_s-slow_e-low (gender
      M/F, pitch low/normal/high, speed slow/normal/fast, energy low/normal/high)
  <download_dir>/data/df1_en.csv, df2_en.csv, df3_en.csv   speaker prompts of the three
      annotators, no header: <spk_id>|<tag>,<tag>,...   (optional)
  <download_dir>/data/excluded_spk_list.txt   speakers whose recordings mix genders: left
      out, as the authors advise (optional)
  <audio_dir>/<subset>/<spk>/<chapter>/<item_name>.wav   LibriTTS-R (24 kHz), subset e.g.
      train-clean-100; default --audio_dir <download_dir>/LibriTTS_R

Splits: LibriTTS's own, speaker-disjoint: train-* -> ``train``, dev-* -> ``validation``,
test-* -> ``test``. Annotated utterances whose audio is not under --audio_dir (a subset
not downloaded) are counted and left out; so are utterances flagged invalid.
Captions: up to --style_prompts (5) of the key's style prompts, chosen by a hash of the
utterance (the same on every build), and one sentence per annotator from the speaker's
tags: "A voice that is feminine, slightly young, tensed."
Metadata: speaker, gender (male / female), pitch, speed, energy (the key's levels),
style_prompt_key, subset, the raw_* measurements present (floats), speaker_tags (one
list per annotator), plus file and original_sample_rate.
Tasks (tasks.json): binary ``gender``; multiclass ``pitch``, ``speed``, ``energy`` (three
levels each); graded ``f0`` (raw_f0_mean), ``speaking_rate`` (raw_speaking_rate),
``loudness`` (raw_loudness_lufs).
"""

import os
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import _common  # noqa: E402
from jaxclap.corpus.records import BinaryTask, GradedTask, MultiClassTask  # noqa: E402

METADATA = "metadata_w_style_prompt_tags_v230922.csv"
CANDIDATES = "style_prompt_candidates_v230922.csv"
SUBSETS = {"train": "train", "dev": "validation", "test": "test"}
LEVELS = {"p": ("pitch", ("low", "normal", "high")),
          "s": ("speed", ("slow", "normal", "fast")),
          "e": ("energy", ("low", "normal", "high"))}
RAW = ("raw_f0_mean", "raw_f0_scale", "raw_lf0_mean", "raw_lf0_scale", "raw_speaking_rate",
       "raw_loudness_lufs", "raw_loudness_mean", "raw_loudness_scale")

TASKS = {
    "binary": {"gender": BinaryTask("gender", ("male",), ("female",), "A man speaking.",
                                    "A woman speaking.")},
    "multiclass": {
        "pitch": MultiClassTask("pitch", LEVELS["p"][1], (
            "A low-pitched voice.", "A voice of normal pitch.", "A high-pitched voice.")),
        "speed": MultiClassTask("speed", LEVELS["s"][1], (
            "Someone speaking slowly.", "Someone speaking at a normal speed.",
            "Someone speaking quickly.")),
        "energy": MultiClassTask("energy", LEVELS["e"][1], (
            "Someone speaking quietly.", "Someone speaking at a normal volume.",
            "Someone speaking loudly.")),
    },
    "graded": {
        "f0": GradedTask("raw_f0_mean", "A high-pitched voice.", "A low-pitched voice."),
        "speaking_rate": GradedTask("raw_speaking_rate", "Someone speaking quickly.",
                                    "Someone speaking slowly."),
        "loudness": GradedTask("raw_loudness_lufs", "Someone speaking loudly.",
                               "Someone speaking quietly."),
    },
}


def add_flags(p):
  p.add_argument("--audio_dir", default=None,
                 help="the LibriTTS-R folder holding the subsets (default "
                      "<download_dir>/LibriTTS_R)")
  p.add_argument("--style_prompts", type=int, default=5,
                 help="style prompts kept as captions per utterance (default 5)")


def parse_key(key: str) -> dict:
  """ "M_p-low_s-slow_e-low" -> {gender, pitch, speed, energy}; ValueError if malformed."""
  parts = key.split("_")
  if len(parts) != 4 or parts[0] not in ("M", "F"):
    raise ValueError(key)
  out = {"gender": "male" if parts[0] == "M" else "female"}
  for part, letter in zip(parts[1:], "pse"):
    name, levels = LEVELS[letter]
    tag, _, level = part.partition("-")
    if tag != letter or level not in levels:
      raise ValueError(key)
    out[name] = level
  return out


def _lines(path: str, sep: str) -> dict[str, str]:
  out = {}
  if os.path.isfile(path):
    with open(path, encoding="utf-8-sig") as f:
      for line in f:
        key, s, rest = line.strip().partition(sep)
        if s:
          out[key.strip()] = rest.strip()
  return out


def _float(v):
  try:
    return float(v)
  except ValueError:
    return None


def list_clips(args, skips):
  data = os.path.join(args.download_dir, "data")
  audio_dir = os.path.abspath(os.path.expanduser(
      args.audio_dir or os.path.join(args.download_dir, "LibriTTS_R")))
  if not os.path.isfile(os.path.join(data, CANDIDATES)):
    raise FileNotFoundError(f"{os.path.join(data, CANDIDATES)}: no such file (is "
                            "--download_dir a clone of github.com/line/LibriTTS-P?)")
  candidates = {k: [p.strip() for p in v.split(";") if p.strip()]
                for k, v in _lines(os.path.join(data, CANDIDATES), "|").items()}
  tags = {}   # speaker -> one tag list per annotator
  for n in (1, 2, 3):
    for spk, t in _lines(os.path.join(data, f"df{n}_en.csv"), "|").items():
      tags.setdefault(spk, []).append([x.strip() for x in t.split(",") if x.strip()])
  excluded = set()
  if os.path.isfile(os.path.join(data, "excluded_spk_list.txt")):
    with open(os.path.join(data, "excluded_spk_list.txt"), encoding="utf-8") as f:
      excluded = {line.strip() for line in f if line.strip()}
  audio = {}   # item_name -> (path, subset)
  for path in _common.files(audio_dir):
    subset = os.path.relpath(path, audio_dir).split(os.sep)[0]
    audio[os.path.splitext(os.path.basename(path))[0]] = (path, subset)
  splits = {"train": [], "validation": [], "test": []}
  rows = _common.read_csv(os.path.join(data, METADATA),
                          ("item_name", "spk_id", "style_prompt_key", "invalid"))
  for line, row in enumerate(rows, start=2):
    item, spk = row["item_name"], row["spk_id"]
    where = f"{METADATA}:{line} ({item})"
    bad = (f"speaker {spk!r} is in excluded_spk_list.txt" if spk in excluded else
           "flagged invalid" if row["invalid"] == "1" else
           f"no audio under '{audio_dir}' (its LibriTTS-R subset not downloaded?)"
           if item not in audio else
           f"style_prompt_key {row['style_prompt_key']!r} is not in {CANDIDATES}"
           if row["style_prompt_key"] not in candidates else None)
    split = SUBSETS.get(audio[item][1].split("-")[0]) if item in audio else None
    if bad is None and split is None:
      bad = f"subset {audio[item][1]!r} is not a LibriTTS train-/dev-/test- subset"
    try:
      style = parse_key(row["style_prompt_key"])
    except ValueError:
      bad = bad or f"style_prompt_key {row['style_prompt_key']!r} is malformed"
    if bad:
      skips.skip(where, _common.BadRecord(bad))
      continue
    path, subset = audio[item]
    prompts = sorted(candidates[row["style_prompt_key"]],
                     key=lambda p: zlib.crc32(f"{item}\0{p}".encode()))[:args.style_prompts]
    speaker = [f"A voice that is {', '.join(t)}." for t in tags.get(spk, []) if t]
    splits[split].append(_common.Clip(
        id=item, path=path, captions=tuple(prompts + speaker),
        metadata=dict(speaker=spk, **style, style_prompt_key=row["style_prompt_key"],
                      subset=subset, speaker_tags=tags.get(spk, []),
                      **{k: _float(row[k]) for k in RAW if k in row})))
  return splits


CORPUS = _common.Corpus("libritts_p", __doc__, list_clips, TASKS, add_flags)

if __name__ == "__main__":
  sys.exit(_common.main(CORPUS))

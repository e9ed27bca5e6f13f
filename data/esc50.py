r"""ESC-50 (Piczak, 2015): 2,000 five-second environmental recordings in 50 classes.

  python data/esc50.py --download_dir=~/downloads/ESC-50-master --out=~/corpora

Licence: CC BY-NC 3.0 (the clips are excerpts of Freesound recordings; attribution in
the download's meta/esc50.csv, column src_file = the Freesound id). Non-commercial use.
Obtain: https://github.com/karolpiczak/ESC-50 -> "Download .zip" (master.zip), unpacked.

Layout expected under --download_dir (the unpacked ESC-50-master folder):
  meta/esc50.csv          header: filename,fold,target,category,esc10,src_file,take
  audio/<fold>-<src_file>-<take>-<target>.wav   e.g. audio/1-100032-A-0.wav
                          (44.1 kHz mono, 5 s)

Splits: the five official folds, ``fold1`` ... ``fold5`` (400 clips each; the clips cut
from one Freesound recording share a fold). CLAP's zero-shot protocol scores every fold
and averages; a linear probe trains on four folds and tests on the fifth.
Captions: templated from the label, CLAP's prompt: "This is a sound of dog."
Metadata: fold, target (0-49), category ("door_wood_knock"), esc10 (bool), src_file,
take, esc10_category (category of an ESC-10 clip, else null), plus file and
original_sample_rate.
Tasks (tasks.json): multiclass ``esc50`` (key category, the 50 classes in target order,
prompts "This is a sound of {category in words}.") and ``esc10`` (key esc10_category,
the 10 classes of the ESC-10 subset, same prompts).

A file in audio/ that meta/esc50.csv does not name, and a row whose fold, target or
category is not ESC-50's, are counted skips; a row whose file is missing or bad is a
counted skip of its fold.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import _common  # noqa: E402
from jaxclap.corpus.records import MultiClassTask  # noqa: E402

# target -> category, as in meta/esc50.csv (target // 10 is the major group).
CATEGORIES = (
    "dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects", "sheep", "crow",
    "rain", "sea_waves", "crackling_fire", "crickets", "chirping_birds", "water_drops",
    "wind", "pouring_water", "toilet_flush", "thunderstorm",
    "crying_baby", "sneezing", "clapping", "breathing", "coughing", "footsteps",
    "laughing", "brushing_teeth", "snoring", "drinking_sipping",
    "door_wood_knock", "mouse_click", "keyboard_typing", "door_wood_creaks",
    "can_opening", "washing_machine", "vacuum_cleaner", "clock_alarm", "clock_tick",
    "glass_breaking",
    "helicopter", "chainsaw", "siren", "car_horn", "engine", "train", "church_bells",
    "airplane", "fireworks", "hand_saw")
ESC10 = ("dog", "rooster", "rain", "sea_waves", "crackling_fire", "crying_baby",
         "sneezing", "clock_tick", "helicopter", "chainsaw")
COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")


def prompt(category: str) -> str:
  return f"This is a sound of {_common.words(category)}."


TASKS = {"multiclass": {
    "esc50": MultiClassTask("category", CATEGORIES, tuple(prompt(c) for c in CATEGORIES)),
    "esc10": MultiClassTask("esc10_category", ESC10, tuple(prompt(c) for c in ESC10)),
}}


def list_clips(args, skips):
  root = args.download_dir
  rows = _common.read_csv(os.path.join(root, "meta", "esc50.csv"), COLUMNS)
  splits = {f"fold{k}": [] for k in range(1, 6)}
  named = set()
  for line, row in enumerate(rows, start=2):
    where = f"meta/esc50.csv:{line} ({row['filename']})"
    named.add(row["filename"])
    try:
      fold, target = int(row["fold"]), int(row["target"])
    except ValueError:
      skips.skip(where, _common.BadRecord(f"fold {row['fold']!r} / target {row['target']!r} "
                                          "is not a number"))
      continue
    if fold not in range(1, 6) or target not in range(len(CATEGORIES)) or \
        CATEGORIES[target] != row["category"]:
      skips.skip(where, _common.BadRecord(
          f"fold {fold} / target {target} / category {row['category']!r} is not ESC-50's"))
      continue
    esc10 = row["esc10"] == "True"
    splits[f"fold{fold}"].append(_common.Clip(
        id=os.path.splitext(row["filename"])[0],
        path=os.path.join(root, "audio", row["filename"]),
        captions=(prompt(row["category"]),),
        metadata=dict(fold=fold, target=target, category=row["category"], esc10=esc10,
                      src_file=row["src_file"], take=row["take"],
                      esc10_category=row["category"] if esc10 else None)))
  for path in _common.files(os.path.join(root, "audio")):
    if os.path.basename(path) not in named:
      skips.skip(os.path.relpath(path, root),
                 _common.BadRecord("not named in meta/esc50.csv"))
  return splits


CORPUS = _common.Corpus("esc50", __doc__, list_clips, TASKS)

if __name__ == "__main__":
  sys.exit(_common.main(CORPUS))

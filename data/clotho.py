r"""Clotho v2.1 (Drossos et al., 2020): 15-30 s Freesound clips, each with 5 captions.

  python data/clotho.py --download_dir=~/downloads/clotho --out=~/corpora

Licence: the captions under Tampere University's licence (non-commercial research and
education, see the Zenodo record); each audio file under its Freesound Creative Commons
licence (column ``license`` of the metadata CSVs, kept in each record's metadata).
Obtain: https://zenodo.org/records/4783391 -> clotho_audio_{development,validation,
evaluation}.7z (unpack each: 7z x), clotho_captions_*.csv, clotho_metadata_*.csv.

Layout expected under --download_dir:
  clotho_captions_development.csv   header: file_name,caption_1,...,caption_5 (UTF-8)
  clotho_captions_validation.csv, clotho_captions_evaluation.csv   the same
  clotho_metadata_development.csv   header: file_name,keywords,sound_id,sound_link,
      start_end_samples,manufacturer,license (ISO-8859-1, as v2 / v2.1 ship them);
      optional: without it a record keeps its captions only
  development/<file_name>, validation/<file_name>, evaluation/<file_name>   the WAVs
      (44.1 kHz mono); the unlabelled test set (clotho_audio_test.7z) is not read

Splits: Clotho's own, renamed to what training and evaluation read by default:
development -> ``train`` (3,839 clips), validation -> ``validation`` (1,045), evaluation
-> ``test`` (1,045); metadata ``clotho_split`` keeps the original name.
Captions: the five real captions of each clip (a training step draws one; retrieval
counts a hit on any of them).
Metadata: clotho_split, keywords (list, split on ";"), sound_id, sound_link,
start_end_samples, manufacturer, license, plus file and original_sample_rate.
Tasks: none (a corpus without tasks is evaluated by retrieval, R@1/5/10 and mAP@10).

A WAV in a split folder that its captions CSV does not name, and a CSV row whose file is
missing or bad, are counted skips.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import _common  # noqa: E402

SPLITS = {"development": "train", "validation": "validation", "evaluation": "test"}
CAPTIONS = tuple(f"caption_{i}" for i in range(1, 6))
METADATA = ("sound_id", "sound_link", "start_end_samples", "manufacturer", "license")


def list_clips(args, skips):
  root = args.download_dir
  splits = {}
  for clotho_split, split in SPLITS.items():
    captions_csv = os.path.join(root, f"clotho_captions_{clotho_split}.csv")
    if not os.path.exists(captions_csv):
      continue   # a split not downloaded; build() refuses if none is
    meta_csv = os.path.join(root, f"clotho_metadata_{clotho_split}.csv")
    meta = {}
    if os.path.exists(meta_csv):
      for row in _common.read_csv(meta_csv, ("file_name", "keywords") + METADATA,
                                  encoding="ISO-8859-1"):
        meta[row["file_name"]] = dict(
            keywords=[k.strip() for k in row["keywords"].split(";") if k.strip()],
            **{k: row[k] for k in METADATA})
    named = set()
    clips = splits[split] = []
    for row in _common.read_csv(captions_csv, ("file_name",) + CAPTIONS):
      named.add(row["file_name"])
      clips.append(_common.Clip(
          id=f"{clotho_split}/{os.path.splitext(row['file_name'])[0]}",
          path=os.path.join(root, clotho_split, row["file_name"]),
          captions=tuple(row[c] for c in CAPTIONS),
          metadata=dict(clotho_split=clotho_split, **meta.get(row["file_name"], {}))))
    if os.path.isdir(os.path.join(root, clotho_split)):
      for path in _common.files(os.path.join(root, clotho_split)):
        if os.path.basename(path) not in named:
          skips.skip(os.path.relpath(path, root), _common.BadRecord(
              f"not named in clotho_captions_{clotho_split}.csv"))
  return splits


CORPUS = _common.Corpus("clotho", __doc__, list_clips, {})

if __name__ == "__main__":
  sys.exit(_common.main(CORPUS))

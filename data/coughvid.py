r"""COUGHVID v3 (Orlandic et al., 2021): 27,550 crowdsourced cough recordings with
self-reported status and, for ~2,800, labels by four physicians.

  python data/coughvid.py --download_dir=~/downloads/coughvid_20211012 --out=~/corpora

Licence: CC BY 4.0. Obtain: https://zenodo.org/records/7024894 ->
public_dataset_v3.zip, unpacked (its coughvid_20211012/ folder is --download_dir).

Layout expected under --download_dir:
  metadata_compiled.csv   header (the first column, a row index, is unnamed):
      ,uuid,datetime,cough_detected,latitude,longitude,age,gender,respiratory_condition,
      fever_muscle_pain,status,status_SSL,quality_1,cough_type_1,dyspnea_1,wheezing_1,
      stridor_1,choking_1,congestion_1,nothing_1,diagnosis_1,severity_1, ... _4
      (only uuid, cough_detected, age, gender, respiratory_condition, fever_muscle_pain
      and status are required)
  <uuid>.webm or <uuid>.ogg   the recording (48 kHz); <uuid>.json is not read (the CSV
      compiles it). A .wav or .flac of the same name is taken first: libsndfile reads
      .ogg but not .webm, which needs ffmpeg (audioread's backend) or a conversion first,
      e.g. `for f in *.webm; do ffmpeg -i "$f" "${f%.webm}.wav"; done`

Splits: COUGHVID defines none: per status (healthy / symptomatic / COVID-19 / none),
uuids sorted, the last 20% ``test``, the 10% before them ``validation``, the rest
``train`` (``_common.speaker_splits``; a uuid is one recording, its submitter unknown).
Only recordings that COUGHVID's classifier scores as a cough with cough_detected >=
--min_cough_detected (0.8, the authors' recommendation) are kept; the others are
counted skips.
Captions (templated): "A cough from a 34-year-old man who reports having COVID-19." /
"... who reports being healthy." / "... having symptoms."; a second caption names the
first physician's cough type ("A wet cough.") where there is one.
Metadata: uuid, datetime, cough_detected, age (int or null), gender, status (null if not
reported), respiratory_condition, fever_muscle_pain (bools), and the physicians'
columns present (quality_1, cough_type_1, diagnosis_1, ...), plus file and
original_sample_rate.
Tasks (tasks.json): binary ``covid`` (status COVID-19 vs healthy), ``symptomatic``
(symptomatic vs healthy), ``sex`` (gender male vs female), ``wet_cough`` (cough_type_1
wet vs dry).
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import _common  # noqa: E402
from jaxclap.corpus.records import BinaryTask  # noqa: E402

COLUMNS = ("uuid", "cough_detected", "age", "gender", "respiratory_condition",
           "fever_muscle_pain", "status")
SUFFIXES = (".wav", ".flac", ".ogg", ".webm")   # the first that exists is read
STATUS = {"healthy": "being healthy", "symptomatic": "having symptoms",
          "COVID-19": "having COVID-19"}
EXPERT = re.compile(r"^(quality|cough_type|dyspnea|wheezing|stridor|choking|congestion|"
                    r"nothing|diagnosis|severity)_[1-4]$")

TASKS = {"binary": {
    "covid": BinaryTask("status", ("COVID-19",), ("healthy",),
                        "A cough from a person with COVID-19.", "A cough from a healthy person."),
    "symptomatic": BinaryTask("status", ("symptomatic",), ("healthy",),
                              "A cough from a person with respiratory symptoms.",
                              "A cough from a healthy person."),
    "sex": BinaryTask("gender", ("male",), ("female",), "A man coughing.", "A woman coughing."),
    "wet_cough": BinaryTask("cough_type_1", ("wet",), ("dry",), "A wet cough.", "A dry cough."),
}}


def add_flags(p):
  p.add_argument("--min_cough_detected", type=float, default=0.8,
                 help="keep recordings COUGHVID's cough classifier scores at least this "
                      "(default 0.8, the authors' advice; 0 keeps all)")


def _bool(v):
  return {"True": True, "False": False}.get(v)


def list_clips(args, skips):
  root = args.download_dir
  clips = []
  for line, row in enumerate(_common.read_csv(os.path.join(root, "metadata_compiled.csv"),
                                              COLUMNS), start=2):
    where = f"metadata_compiled.csv:{line} ({row['uuid']})"
    try:
      detected = float(row["cough_detected"])
    except ValueError:
      skips.skip(where, _common.BadRecord(f"cough_detected {row['cough_detected']!r} "
                                          "is not a number"))
      continue
    if detected < args.min_cough_detected:
      skips.skip(where, _common.BadRecord(
          f"cough_detected {detected} < --min_cough_detected={args.min_cough_detected}"))
      continue
    found = [os.path.join(root, row["uuid"] + s) for s in SUFFIXES
             if os.path.isfile(os.path.join(root, row["uuid"] + s))]
    try:
      age = int(float(row["age"])) if row["age"] else None
    except ValueError:
      age = None
    gender = row["gender"] or None
    status = row["status"] if row["status"] in STATUS else None
    person = {"male": "man", "female": "woman"}.get(gender, "person")
    aged = f"{age}-year-old {person}" if age else person
    first = f"A cough from {_common.article(aged)}"
    captions = [f"{first} who reports {STATUS[status]}." if status else f"{first}."]
    if row.get("cough_type_1") in ("wet", "dry"):
      captions.append(f"A {row['cough_type_1']} cough.")
    meta = dict(uuid=row["uuid"], datetime=row.get("datetime"), cough_detected=detected,
                age=age, gender=gender, status=status,
                respiratory_condition=_bool(row["respiratory_condition"]),
                fever_muscle_pain=_bool(row["fever_muscle_pain"]),
                **{k: v or None for k, v in row.items() if EXPERT.match(k)})
    clips.append(_common.Clip(
        id=row["uuid"], path=found[0] if found else None, captions=tuple(captions),
        metadata=meta, error=None if found else
        f"no audio file '{row['uuid']}' with one of the suffixes {SUFFIXES}"))
  groups = {}
  for c in clips:
    groups.setdefault(str(c.metadata["status"]), set()).add(c.id)
  split_of = _common.speaker_splits(groups)
  splits = {"train": [], "validation": [], "test": []}
  for c in clips:
    splits[split_of[c.id]].append(c)
  return splits


CORPUS = _common.Corpus("coughvid", __doc__, list_clips, TASKS, add_flags)

if __name__ == "__main__":
  sys.exit(_common.main(CORPUS))

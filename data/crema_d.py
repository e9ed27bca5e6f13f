r"""CREMA-D (Cao et al., 2014): 7,442 clips of 91 actors speaking 12 sentences in 6 emotions.

  python data/crema_d.py --download_dir=~/downloads/CREMA-D --out=~/corpora

Licence: Open Database License (ODbL 1.0); the contents under the Database Contents
License (DbCL 1.0). Obtain: https://github.com/CheyneyComputerScience/CREMA-D (git lfs:
`git lfs pull --include "AudioWAV/*,VideoDemographics.csv"`; the same files are mirrored
on Kaggle and TFDS's manual download).

Layout expected under --download_dir:
  AudioWAV/<ActorID>_<Sentence>_<Emotion>_<Level>.wav   e.g. AudioWAV/1001_DFA_ANG_XX.wav
                          (16 kHz mono); Sentence one of the 12 codes below, Emotion
                          ANG DIS FEA HAP NEU SAD, Level LO MD HI XX (unspecified)
  VideoDemographics.csv   header: ActorID,Age,Sex,Race,Ethnicity

Splits: CREMA-D defines none; these are speaker-disjoint and the same on every machine:
for each sex, actors sorted by id, the last 20% are ``test``, the 10% before them
``validation``, the rest ``train`` (``_common.speaker_splits``).
Captions (templated from the labels): 'A 51-year-old man says "Don't forget a jacket."
in an angry voice.' and 'A man speaking in a very angry voice.' (LO "slightly", HI
"very", MD / XX no adverb).
Metadata: speaker (ActorID), sentence (code), transcript, emotion (angry disgusted
fearful happy neutral sad), level (low medium high unspecified), sex (male / female),
age (int), race, ethnicity, plus file and original_sample_rate.
Tasks (tasks.json): multiclass ``emotion`` (6 classes, "A person speaking in an angry
voice."), binary ``sex`` ("A man speaking." / "A woman speaking."), graded ``age``
("An elderly person speaking.").

A file whose name breaks the scheme or whose actor is not in VideoDemographics.csv is a
counted skip; so is a bad file (the download has at least one empty clip,
1076_MTI_SAD_XX.wav).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import _common  # noqa: E402
from jaxclap.corpus.records import BinaryTask, GradedTask, MultiClassTask  # noqa: E402

SENTENCES = {
    "IEO": "It's eleven o'clock.", "TIE": "That is exactly what happened.",
    "IOM": "I'm on my way to the meeting.", "IWW": "I wonder what this is about.",
    "TAI": "The airplane is almost full.", "MTI": "Maybe tomorrow it will be cold.",
    "IWL": "I would like a new alarm clock.", "ITH": "I think I have a doctor's appointment.",
    "DFA": "Don't forget a jacket.", "ITS": "I think I've seen this before.",
    "TSI": "The surface is slick.", "WSI": "We'll stop in a couple of minutes.",
}
EMOTIONS = {"ANG": "angry", "DIS": "disgusted", "FEA": "fearful", "HAP": "happy",
            "NEU": "neutral", "SAD": "sad"}
LEVELS = {"LO": ("low", "slightly "), "MD": ("medium", ""), "HI": ("high", "very "),
          "XX": ("unspecified", "")}
SEXES = {"Male": "male", "Female": "female"}
PERSON = {"male": "man", "female": "woman"}

TASKS = {
    "multiclass": {"emotion": MultiClassTask(
        "emotion", tuple(EMOTIONS.values()),
        tuple(_common.emotion_prompt(e) for e in EMOTIONS.values()))},
    "binary": {"sex": BinaryTask("sex", ("male",), ("female",), "A man speaking.",
                                 "A woman speaking.")},
    "graded": {"age": GradedTask("age", "An elderly person speaking.")},
}


def list_clips(args, skips):
  root = args.download_dir
  demo = {}
  for row in _common.read_csv(os.path.join(root, "VideoDemographics.csv"),
                              ("ActorID", "Age", "Sex", "Race", "Ethnicity")):
    if row["Sex"] not in SEXES:
      skips.skip(f"VideoDemographics.csv ActorID {row['ActorID']}",
                 _common.BadRecord(f"Sex {row['Sex']!r} is not one of {sorted(SEXES)}"))
      continue
    demo[row["ActorID"]] = row
  clips = []
  for path in _common.files(os.path.join(root, "AudioWAV")):
    rel = os.path.relpath(path, root)
    parts = os.path.splitext(os.path.basename(path))[0].split("_")
    if len(parts) != 4 or parts[1] not in SENTENCES or parts[2] not in EMOTIONS or \
        parts[3] not in LEVELS:
      skips.skip(rel, _common.BadRecord(
          "name is not <ActorID>_<Sentence>_<Emotion>_<Level>.wav with CREMA-D's codes"))
      continue
    actor, sentence, emo, level = parts
    if actor not in demo:
      skips.skip(rel, _common.BadRecord(f"actor {actor!r} is not in VideoDemographics.csv"))
      continue
    d = demo[actor]
    sex, emotion = SEXES[d["Sex"]], EMOTIONS[emo]
    level_name, adverb = LEVELS[level]
    try:
      age = int(d["Age"])
    except ValueError:
      age = None
    aged = f"{age}-year-old {PERSON[sex]}" if age else PERSON[sex]
    clips.append(_common.Clip(
        id=os.path.splitext(os.path.basename(path))[0], path=path,
        captions=(f'{_common.article(aged).capitalize()} says "{SENTENCES[sentence]}" in '
                  f'{_common.article(emotion + " voice")}.',
                  f"{_common.article(PERSON[sex]).capitalize()} speaking in "
                  f"{_common.article(adverb + emotion + ' voice')}."),
        metadata=dict(speaker=actor, sentence=sentence, transcript=SENTENCES[sentence],
                      emotion=emotion, level=level_name, sex=sex, age=age, race=d["Race"],
                      ethnicity=d["Ethnicity"])))
  groups = {}
  for c in clips:
    groups.setdefault(c.metadata["sex"], set()).add(c.metadata["speaker"])
  split_of = _common.speaker_splits(groups)
  splits = {"train": [], "validation": [], "test": []}
  for c in clips:
    splits[split_of[c.metadata["speaker"]]].append(c)
  return splits


CORPUS = _common.Corpus("crema_d", __doc__, list_clips, TASKS)

if __name__ == "__main__":
  sys.exit(_common.main(CORPUS))

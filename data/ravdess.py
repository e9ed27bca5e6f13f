r"""RAVDESS (Livingstone & Russo, 2018): 24 actors speaking (and singing) two statements in 8 emotions.

  python data/ravdess.py --download_dir=~/downloads/RAVDESS --out=~/corpora

Licence: CC BY-NC-SA 4.0. Obtain: https://zenodo.org/records/1188976 ->
Audio_Speech_Actors_01-24.zip (1,440 clips) and, optionally, Audio_Song_Actors_01-24.zip
(1,012 clips), unpacked into --download_dir.

Layout expected under --download_dir (any folder depth; the zips unpack to Actor_01/ ...
Actor_24/): files named with RAVDESS's 7-part identifier,
  Actor_12/03-01-06-01-02-01-12.wav   modality (03 audio-only) - vocal channel (01 speech,
      02 song) - emotion (01 neutral, 02 calm, 03 happy, 04 sad, 05 angry, 06 fearful,
      07 disgust, 08 surprised) - intensity (01 normal, 02 strong) - statement (01 "Kids
      are talking by the door", 02 "Dogs are sitting by the door") - repetition (01, 02)
      - actor (01-24; odd male, even female). 48 kHz.
Other files (the video zips' .mp4) are ignored.

Splits: RAVDESS defines none; the common speaker-disjoint one: actors 1-20 ``train``,
21-22 ``validation``, 23-24 ``test`` (one man and one woman in each held-out split).
Captions (templated): 'A man says "Kids are talking by the door." in a calm voice.' and
'A man speaking in a strongly calm voice.' (song: "sings", "singing"; strong intensity
"strongly").
Metadata: speaker (actor number), vocal_channel (speech / song), emotion (neutral calm
happy sad angry fearful disgusted surprised), intensity (normal / strong), statement
(1 / 2), transcript, repetition, sex (male / female), plus file and original_sample_rate.
Tasks (tasks.json): multiclass ``emotion`` (8 classes, "A person speaking in a calm
voice."), binary ``sex``, binary ``intensity`` (strong vs normal) and, the song files
being optional, binary ``singing`` (song vs speech; empty if only speech was built).

A file whose name breaks the scheme (wrong part count, unknown code, modality other than
03, actor outside 1-24) is a counted skip.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import _common  # noqa: E402
from jaxclap.corpus.records import BinaryTask, MultiClassTask  # noqa: E402

EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry",
            "06": "fearful", "07": "disgusted", "08": "surprised"}
CHANNELS = {"01": "speech", "02": "song"}
INTENSITIES = {"01": "normal", "02": "strong"}
STATEMENTS = {"01": "Kids are talking by the door.", "02": "Dogs are sitting by the door."}
SPLIT_OF_ACTOR = {**{a: "train" for a in range(1, 21)}, 21: "validation", 22: "validation",
                  23: "test", 24: "test"}

TASKS = {
    "multiclass": {"emotion": MultiClassTask(
        "emotion", tuple(EMOTIONS.values()),
        tuple(_common.emotion_prompt(e) for e in EMOTIONS.values()))},
    "binary": {
        "sex": BinaryTask("sex", ("male",), ("female",), "A man speaking.", "A woman speaking."),
        "intensity": BinaryTask("intensity", ("strong",), ("normal",),
                                "Someone speaking with strong emotion.",
                                "Someone speaking with mild emotion."),
        "singing": BinaryTask("vocal_channel", ("song",), ("speech",), "Someone singing.",
                              "Someone speaking."),
    },
}


def parse_name(name: str) -> dict:
  """A RAVDESS file name -> its labels; ``BadRecord`` if it breaks the scheme."""
  parts = os.path.splitext(name)[0].split("-")
  if len(parts) != 7 or parts[0] != "03" or parts[1] not in CHANNELS or \
      parts[2] not in EMOTIONS or parts[3] not in INTENSITIES or parts[4] not in STATEMENTS \
      or parts[5] not in ("01", "02") or not parts[6].isdigit() or \
      int(parts[6]) not in SPLIT_OF_ACTOR:
    raise _common.BadRecord(
        "name is not RAVDESS's audio-only identifier 03-<channel>-<emotion>-<intensity>-"
        "<statement>-<repetition>-<actor>.wav")
  actor = int(parts[6])
  return dict(speaker=actor, vocal_channel=CHANNELS[parts[1]], emotion=EMOTIONS[parts[2]],
              intensity=INTENSITIES[parts[3]], statement=int(parts[4]),
              transcript=STATEMENTS[parts[4]], repetition=int(parts[5]),
              sex="male" if actor % 2 else "female")


def captions(m: dict) -> tuple[str, str]:
  person = "man" if m["sex"] == "male" else "woman"
  says, speaking = ("sings", "singing") if m["vocal_channel"] == "song" else ("says", "speaking")
  strongly = "strongly " if m["intensity"] == "strong" else ""
  return (f'A {person} {says} "{m["transcript"]}" in '
          f'{_common.article(m["emotion"] + " voice")}.',
          f"A {person} {speaking} in {_common.article(strongly + m['emotion'] + ' voice')}.")


def list_clips(args, skips):
  root = args.download_dir
  splits = {"train": [], "validation": [], "test": []}
  for path in _common.files(root):
    try:
      m = parse_name(os.path.basename(path))
    except _common.BadRecord as e:
      skips.skip(os.path.relpath(path, root), e)
      continue
    splits[SPLIT_OF_ACTOR[m["speaker"]]].append(_common.Clip(
        id=os.path.splitext(os.path.basename(path))[0], path=path, captions=captions(m),
        metadata=m))
  return splits


CORPUS = _common.Corpus("ravdess", __doc__, list_clips, TASKS)

if __name__ == "__main__":
  sys.exit(_common.main(CORPUS))

r"""ICBHI 2017 Respiratory Sound Database (Rocha et al., 2019): 920 lung-sound recordings of
126 patients, cut into their 6,898 annotated respiratory cycles.

  python data/icbhi.py --download_dir=~/downloads/ICBHI_final_database --out=~/corpora

Licence: free for research (the challenge's terms; cite Rocha et al., Physiol. Meas.
2019). Obtain: https://bhichallenge.med.auth.gr/ICBHI_2017_Challenge ->
ICBHI_final_database.zip, ICBHI_challenge_train_test.txt, ICBHI_Challenge_diagnosis.txt
(put the two .txt files in the unpacked folder).

Layout expected under --download_dir:
  <patient>_<index>_<location>_<mode>_<equipment>.wav   e.g. 101_1b1_Al_sc_Meditron.wav
      location Tc Al Ar Pl Pr Ll Lr, mode sc / mc, equipment AKGC417L LittC2SE Litt3200
      Meditron (4-44.1 kHz)
  <same name>.txt     one cycle a line, tab-separated: onset offset crackles wheezes
                      (seconds, seconds, 0/1, 0/1)
  ICBHI_challenge_train_test.txt   tab-separated: <recording name> train|test
  ICBHI_Challenge_diagnosis.txt    tab-separated: <patient> <diagnosis> (optional)

Splits: the official 60/40 challenge split, by recording: ``train`` and ``test`` (note it
is not patient-disjoint: a few patients have recordings in both).
Records: one per respiratory cycle (the segment onset..offset of its recording).
Captions (templated): "Breathing sounds with crackles." (no crackles or wheezes /
crackles / wheezes / crackles and wheezes) and "A respiratory cycle recorded at the
anterior left chest with a Meditron stethoscope."
Metadata: patient, recording, cycle (index), onset, offset, crackles, wheezes (bools),
label (normal / crackle / wheeze / both), chest_location, acquisition_mode, equipment,
diagnosis (null without the diagnosis file), plus file and original_sample_rate.
Tasks (tasks.json): multiclass ``cycle`` (the challenge's 4 classes), binary
``abnormal`` (any adventitious sound vs normal), ``crackles``, ``wheezes``, multiclass
``diagnosis`` (the 8 diagnoses).

A recording without its annotation file or absent from the split file, a malformed
annotation line and a cycle with offset <= onset are counted skips.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import _common  # noqa: E402
from jaxclap.corpus.records import BinaryTask, MultiClassTask  # noqa: E402

LOCATIONS = {"Tc": "trachea", "Al": "anterior left chest", "Ar": "anterior right chest",
             "Pl": "posterior left chest", "Pr": "posterior right chest",
             "Ll": "lateral left chest", "Lr": "lateral right chest"}
EQUIPMENT = {"AKGC417L": "an AKG C417L microphone",
             "LittC2SE": "a 3M Littmann Classic II SE stethoscope",
             "Litt3200": "a 3M Littmann 3200 electronic stethoscope",
             "Meditron": "a Meditron stethoscope"}
MODES = {"sc": "sequential", "mc": "simultaneous"}
LABELS = {(False, False): "normal", (True, False): "crackle", (False, True): "wheeze",
          (True, True): "both"}
SOUNDS = {"normal": "no crackles or wheezes", "crackle": "crackles", "wheeze": "wheezes",
          "both": "crackles and wheezes"}
DIAGNOSES = ("Healthy", "URTI", "LRTI", "COPD", "Asthma", "Bronchiectasis", "Bronchiolitis",
             "Pneumonia")


def _diagnosis_prompt(d):
  if d == "Healthy":
    return "Breathing sounds of a healthy person."
  long = {"URTI": "an upper respiratory tract infection",
          "LRTI": "a lower respiratory tract infection"}.get(d, d)
  return f"Breathing sounds of a patient with {long}."


TASKS = {
    "multiclass": {
        "cycle": MultiClassTask("label", tuple(SOUNDS),
                                tuple(f"Breathing sounds with {s}." for s in SOUNDS.values())),
        "diagnosis": MultiClassTask("diagnosis", DIAGNOSES,
                                    tuple(_diagnosis_prompt(d) for d in DIAGNOSES)),
    },
    "binary": {
        "abnormal": BinaryTask("label", ("crackle", "wheeze", "both"), ("normal",),
                               "Abnormal breathing sounds with crackles or wheezes.",
                               "Normal breathing sounds."),
        "crackles": BinaryTask("crackles", (True,), (False,), "Breathing sounds with crackles.",
                               "Breathing sounds without crackles."),
        "wheezes": BinaryTask("wheezes", (True,), (False,), "Breathing sounds with wheezes.",
                              "Breathing sounds without wheezes."),
    },
}


def _table(path: str, where: str, required: bool = True) -> dict[str, str]:
  """A two-column tab/space-separated file -> {first: second}."""
  if not os.path.isfile(path):
    if required:
      raise FileNotFoundError(f"{path}: no such file ({where})")
    return {}
  out = {}
  with open(path, encoding="utf-8-sig") as f:
    for line in f:
      parts = line.split()
      if len(parts) == 2:
        out[parts[0]] = parts[1]
  return out


def list_clips(args, skips):
  root = args.download_dir
  split_of = _table(os.path.join(root, "ICBHI_challenge_train_test.txt"), "the official split")
  diagnosis = _table(os.path.join(root, "ICBHI_Challenge_diagnosis.txt"), "", required=False)
  splits = {"train": [], "test": []}
  for path in _common.files(root):
    rel, name = os.path.relpath(path, root), os.path.splitext(os.path.basename(path))[0]
    parts = name.split("_")
    if len(parts) != 5 or parts[2] not in LOCATIONS or parts[3] not in MODES or \
        parts[4] not in EQUIPMENT:
      skips.skip(rel, _common.BadRecord(
          "name is not <patient>_<index>_<location>_<mode>_<equipment>.wav with ICBHI's codes"))
      continue
    if split_of.get(name) not in splits:
      skips.skip(rel, _common.BadRecord("not in ICBHI_challenge_train_test.txt"))
      continue
    annotation = os.path.splitext(path)[0] + ".txt"
    if not os.path.isfile(annotation):
      skips.skip(rel, _common.BadRecord(f"no annotation file {os.path.basename(annotation)}"))
      continue
    patient, _, loc, mode, equip = parts
    with open(annotation, encoding="utf-8") as f:
      lines = [l for l in f.read().splitlines() if l.strip()]
    for i, line in enumerate(lines):
      where = f"{os.path.basename(annotation)}:{i + 1}"
      try:
        onset, offset, crackles, wheezes = line.split()
        onset, offset = float(onset), float(offset)
        if crackles not in ("0", "1") or wheezes not in ("0", "1"):
          raise ValueError
      except ValueError:
        skips.skip(where, _common.BadRecord("annotation line is not 'onset offset 0|1 0|1'"))
        continue
      if offset <= onset:
        skips.skip(where, _common.BadRecord(f"cycle ends ({offset}) before it starts ({onset})"))
        continue
      label = LABELS[crackles == "1", wheezes == "1"]
      splits[split_of[name]].append(_common.Clip(
          id=f"{name}/{i:02d}", path=path, start=onset, end=offset,
          captions=(f"Breathing sounds with {SOUNDS[label]}.",
                    f"A respiratory cycle recorded at the {LOCATIONS[loc]} with "
                    f"{EQUIPMENT[equip]}."),
          metadata=dict(patient=patient, recording=name, cycle=i, onset=onset, offset=offset,
                        crackles=crackles == "1", wheezes=wheezes == "1", label=label,
                        chest_location=LOCATIONS[loc], acquisition_mode=MODES[mode],
                        equipment=equip, diagnosis=diagnosis.get(patient))))
  return splits


CORPUS = _common.Corpus("icbhi", __doc__, list_clips, TASKS)

if __name__ == "__main__":
  sys.exit(_common.main(CORPUS))

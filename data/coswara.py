r"""Coswara (Sharma et al., 2020; Bhattacharya et al., 2023): breathing, cough, vowel and
counting recordings of ~2,700 participants with their self-reported COVID-19 status.

  python data/coswara.py --download_dir=~/downloads/Coswara-Data --out=~/corpora

Licence: CC BY 4.0. Obtain: `git clone https://github.com/iiscleap/Coswara-Data`, then
`python extract_data.py .` in it (it joins each <date>/<date>.tar.gz.* and unpacks it
into Extracted_data/).

Layout expected under --download_dir (the clone):
  combined_data.csv   header: id,a,covid_status,ep,g,l_c,l_l,l_s,rU,asthma,cough,smoker,...
      (id, a = age, covid_status and g = gender are required; every other column of
      csv_labels_legend.json that is present is kept)
  Extracted_data/<date>/<id>/<kind>.wav   kind one of breathing-deep, breathing-shallow,
      cough-heavy, cough-shallow, counting-fast, counting-normal, vowel-a, vowel-e,
      vowel-o (44.1 / 48 kHz)

Splits: Coswara defines none; participant-disjoint: per covid_status, participant ids
sorted, the last 20% ``test``, the 10% before them ``validation``, the rest ``train``
(``_common.speaker_splits``); all nine recordings of a participant share a split.
Records: one per recording.
Captions (templated): "A 26-year-old woman coughing heavily." and "A cough from a
person who reports being healthy." (or "having COVID-19", "having recovered from
COVID-19", ...; see STATUS).
Metadata: participant, kind, date, age, gender, covid_status, covid (positive / negative /
null: the status of an unclear group), country, and the symptom / condition columns
present (asthma, cough, fever, ... as in the CSV), plus file and original_sample_rate.
Tasks (tasks.json): binary ``covid`` (positive_mild / positive_moderate /
positive_asymp vs healthy), ``sex``; multiclass ``kind`` (the nine recording kinds).

A recording whose participant is not in combined_data.csv, or whose file name is not
one of the nine kinds, is a counted skip.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import _common  # noqa: E402
from jaxclap.corpus.records import BinaryTask, MultiClassTask  # noqa: E402

KINDS = {"breathing-deep": ("breathing deeply", "A person breathing deeply."),
         "breathing-shallow": ("breathing shallowly", "A person breathing shallowly."),
         "cough-heavy": ("coughing heavily", "A person coughing heavily."),
         "cough-shallow": ("coughing lightly", "A person coughing lightly."),
         "counting-fast": ("counting quickly", "A person counting numbers quickly."),
         "counting-normal": ("counting at a normal pace",
                             "A person counting numbers at a normal pace."),
         "vowel-a": ("holding the vowel a", "A person holding the vowel a."),
         "vowel-e": ("holding the vowel e", "A person holding the vowel e."),
         "vowel-o": ("holding the vowel o", "A person holding the vowel o.")}
STATUS = {"healthy": "being healthy", "positive_mild": "having COVID-19 with mild symptoms",
          "positive_moderate": "having COVID-19 with moderate symptoms",
          "positive_asymp": "having COVID-19 without symptoms",
          "recovered_full": "having recovered from COVID-19",
          "resp_illness_not_identified": "a respiratory illness other than COVID-19",
          "no_resp_illness_exposed": "being exposed to COVID-19 without illness",
          "under_validation": "a status under validation"}
POSITIVE = ("positive_mild", "positive_moderate", "positive_asymp")
KEPT = ("ep", "l_c", "l_s", "rU", "asthma", "cough", "smoker", "test_status", "ht", "cold",
        "diabetes", "diarrhoea", "um", "ihd", "bd", "st", "fever", "ftg", "mp",
        "loss_of_smell", "cld", "pneumonia", "vacc", "others_resp", "others_preexist")

TASKS = {
    "binary": {
        "covid": BinaryTask("covid_status", POSITIVE, ("healthy",),
                            "Sounds from a person with COVID-19.",
                            "Sounds from a healthy person."),
        "sex": BinaryTask("gender", ("male",), ("female",), "A man.", "A woman."),
    },
    "multiclass": {"kind": MultiClassTask("kind", tuple(KINDS),
                                          tuple(p for _, p in KINDS.values()))},
}


def _value(v):
  return {"True": True, "False": False, "": None}.get(v, v)


def list_clips(args, skips):
  root = args.download_dir
  people = {row["id"]: row for row in _common.read_csv(
      os.path.join(root, "combined_data.csv"), ("id", "a", "covid_status", "g"))}
  clips = []
  for path in _common.files(os.path.join(root, "Extracted_data")):
    rel = os.path.relpath(path, root)
    parts = rel.split(os.sep)   # Extracted_data/<date>/<id>/<kind>.wav
    kind = os.path.splitext(parts[-1])[0]
    if len(parts) != 4 or kind not in KINDS:
      skips.skip(rel, _common.BadRecord(
          f"not Extracted_data/<date>/<id>/<kind>.wav with a kind of {sorted(KINDS)}"))
      continue
    date, pid = parts[1], parts[2]
    if pid not in people:
      skips.skip(rel, _common.BadRecord(f"participant {pid!r} is not in combined_data.csv"))
      continue
    p = people[pid]
    try:
      age = int(float(p["a"])) if p["a"] else None
    except ValueError:
      age = None
    gender = p["g"] or None
    status = p["covid_status"] or None
    person = {"male": "man", "female": "woman"}.get(gender, "person")
    aged = f"{age}-year-old {person}" if age else person
    doing = KINDS[kind][0]
    captions = [f"{_common.article(aged).capitalize()} {doing}."]
    if status in STATUS:
      noun = {"breathing": "Breathing", "cough": "A cough", "counting": "Counting",
              "vowel": "A sustained vowel"}[kind.split("-")[0]]
      captions.append(f"{noun} from a person who reports {STATUS[status]}.")
    clips.append(_common.Clip(
        id=f"{pid}/{kind}", path=path, captions=tuple(captions),
        metadata=dict(participant=pid, kind=kind, date=date, age=age, gender=gender,
                      covid_status=status,
                      covid="positive" if status in POSITIVE else
                      "negative" if status == "healthy" else None,
                      **{k: _value(p[k]) for k in KEPT if k in p})))
  groups = {}
  for c in clips:
    groups.setdefault(str(c.metadata["covid_status"]), set()).add(c.metadata["participant"])
  split_of = _common.speaker_splits(groups)
  splits = {"train": [], "validation": [], "test": []}
  for c in clips:
    splits[split_of[c.metadata["participant"]]].append(c)
  return splits


CORPUS = _common.Corpus("coswara", __doc__, list_clips, TASKS)

if __name__ == "__main__":
  sys.exit(_common.main(CORPUS))

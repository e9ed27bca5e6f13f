r"""ParaSpeechCaps (Diwan et al., 2025): rich style captions (59 intrinsic and situational
tags: "guttural", "whispered", "happy", ...) for utterances of VoxCeleb, Expresso, EARS
and Emilia. The release holds the annotations only; the audio comes from those corpora.

  python data/paraspeechcaps.py --download_dir=~/downloads/paraspeechcaps \
      --voxceleb_root=~/corpora_src/voxceleb --expresso_root=~/corpora_src/expresso \
      --ears_root=~/corpora_src/ears --emilia_root=~/corpora_src/emilia --out=~/corpora

Licence: the annotations CC BY-NC-SA 4.0 (huggingface.co/datasets/ajd12342/paraspeechcaps;
code github.com/ajd12342/paraspeechcaps). The audio keeps its source corpus's terms:
VoxCeleb1/2 CC BY 4.0 (by request, mm.kaist.ac.kr/datasets/voxceleb), Expresso CC BY-NC
4.0, EARS CC BY-NC 4.0, Emilia CC BY-NC 4.0. Non-commercial use.
Obtain: the dataset repository as downloaded from the Hugging Face Hub (e.g. `git clone`
of the dataset, or `huggingface-cli download ajd12342/paraspeechcaps --repo-type dataset
--local-dir DIR`), and each source corpus prepared as the release's dataset/README.md
says (VoxCeleb2 m4a converted to wav, loudness normalised, Voicefixer on VoxCeleb,
Expresso's conversational audio VAD-segmented): a row's audio is
``<source root>/<relative_audio_path>``.

Layout expected under --download_dir (the dataset repository):
  data/train_scaled-NNNNN-of-NNNNN.parquet   PSC-Scaled (automatic tags, 924,651 rows)
  data/train_base-NNNNN-of-NNNNN.parquet     PSC-Base (human tags, 116,516 rows)
  data/dev-NNNNN-of-NNNNN.parquet, data/holdout-NNNNN-of-NNNNN.parquet
      columns: source, relative_audio_path, text_description (1-2 captions),
      transcription, intrinsic_tags, situational_tags, basic_tags, all_tags, speakerid,
      name, duration, gender, accent, pitch, speaking_rate, noise, utterance_pitch_mean,
      snr, phonemes (source, relative_audio_path, text_description, speakerid required)
  and under each source root, e.g. voxceleb1/dev/wav/id10001/1zcIwhmdeo4/00001.wav,
  EN/EN_B00030/EN_B00030_S01984/mp3/EN_B00030_S01984_W000037.mp3 (Emilia).

Splits: the release's own: train_base -> ``train``, train_scaled -> ``train_scaled``,
dev -> ``validation``, holdout -> ``test`` (``--splits`` picks which; default all). Rows
of a source whose root is not given, and rows whose file is missing, are counted skips
listed in ``missing_audio.tsv``.
Captions: the row's text_description (its 1-2 style descriptions).
Metadata: source, relative_audio_path, transcription, speaker (speakerid), name, gender,
accent, pitch, speaking_rate, noise, duration, utterance_pitch_mean, snr, and the tag
lists intrinsic_tags, situational_tags, basic_tags (an empty list where the release has
null), plus file and original_sample_rate. phonemes and all_tags (the union of the tag
lists) are left out.
Tasks (tasks.json): binary ``gender``; multiclass ``pitch`` (low- / medium- /
high-pitched) and ``speaking_rate`` (slow / measured / fast speed), the release's basic
tag bins; graded ``utterance_pitch`` (utterance_pitch_mean) and ``snr``.
"""

import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import _common  # noqa: E402
from jaxclap.corpus.records import BinaryTask, GradedTask, MultiClassTask  # noqa: E402

SPLITS = {"train_base": "train", "train_scaled": "train_scaled", "dev": "validation",
          "holdout": "test"}
SOURCES = ("voxceleb", "expresso", "ears", "emilia")
REQUIRED = ("source", "relative_audio_path", "text_description", "speakerid")
TEXT = ("transcription", "name", "accent", "pitch", "speaking_rate", "noise")
NUMBERS = ("duration", "utterance_pitch_mean", "snr")
TAGS = ("intrinsic_tags", "situational_tags", "basic_tags")
PITCH = ("low-pitched", "medium-pitched", "high-pitched")
RATE = ("slow speed", "measured speed", "fast speed")

TASKS = {
    "binary": {"gender": BinaryTask("gender", ("male",), ("female",), "A man speaking.",
                                    "A woman speaking.")},
    "multiclass": {
        "pitch": MultiClassTask("pitch", PITCH, (
            "A low-pitched voice.", "A voice of medium pitch.", "A high-pitched voice.")),
        "speaking_rate": MultiClassTask("speaking_rate", RATE, (
            "Someone speaking slowly.", "Someone speaking at a measured speed.",
            "Someone speaking quickly.")),
    },
    "graded": {
        "utterance_pitch": GradedTask("utterance_pitch_mean", "A high-pitched voice.",
                                      "A low-pitched voice."),
        "snr": GradedTask("snr", "A recording in a very clean environment.",
                          "A recording in a very noisy environment."),
    },
}


def add_flags(p):
  for s in SOURCES:
    p.add_argument(f"--{s}_root", default=None,
                   help=f"the prepared {s} audio; rows from {s} are skipped without it")
  p.add_argument("--splits", default=",".join(SPLITS),
                 help=f"release splits to build, comma-separated (default {','.join(SPLITS)})")


def _rows(path: str) -> list[dict]:
  import pyarrow.parquet as pq

  table = pq.read_table(path)
  missing = [c for c in REQUIRED if c not in table.column_names]
  if missing:
    raise ValueError(f"{path}: no column(s) {missing}; its columns are {table.column_names}")
  return table.to_pylist()


def _float(v):
  try:
    return None if v is None else float(v)
  except (TypeError, ValueError):
    return None


def list_clips(args, skips):
  roots = {s: getattr(args, f"{s}_root") for s in SOURCES}
  roots = {s: os.path.abspath(os.path.expanduser(r)) for s, r in roots.items() if r}
  wanted = [s.strip() for s in args.splits.split(",") if s.strip()]
  unknown = [s for s in wanted if s not in SPLITS]
  if unknown:
    raise ValueError(f"--splits: {unknown} are not ParaSpeechCaps splits {list(SPLITS)}")
  splits = {}
  for name in wanted:
    files = sorted(glob.glob(os.path.join(args.download_dir, "data", f"{name}-*.parquet")))
    if not files:
      raise FileNotFoundError(f"{os.path.join(args.download_dir, 'data', name)}-*.parquet: "
                              "no such files (is --download_dir the dataset repository?)")
    clips = splits.setdefault(SPLITS[name], [])
    for f in files:
      for n, row in enumerate(_rows(f)):
        rel = row["relative_audio_path"] or ""
        source = (row["source"] or "").lower()
        where = f"{os.path.basename(f)}:{n} ({rel})"
        captions = tuple(row["text_description"] or ())
        if source not in SOURCES:
          skips.skip(where, _common.BadRecord(f"source {row['source']!r} is not one of "
                                              f"{SOURCES}"))
          continue
        if not rel or os.path.isabs(rel) or ".." in rel.split("/"):
          skips.skip(where, _common.BadRecord(f"relative_audio_path {rel!r} is not a "
                                              "relative path inside the source corpus"))
          continue
        root = roots.get(source)
        clips.append(_common.Clip(
            id=f"{source}/{rel}",
            path=os.path.join(root, rel) if root else None,
            error=None if root else f"no --{source}_root given ({source} audio not obtained)",
            captions=captions,
            metadata=dict(source=source, relative_audio_path=rel, speaker=row["speakerid"],
                          **{k: row.get(k) for k in TEXT},
                          gender=(row.get("gender") or "").lower() or None,
                          **{k: _float(row.get(k)) for k in NUMBERS},
                          **{k: list(row.get(k) or ()) for k in TAGS})))
  return splits


CORPUS = _common.Corpus("paraspeechcaps", __doc__, list_clips, TASKS, add_flags)

if __name__ == "__main__":
  sys.exit(_common.main(CORPUS))

r"""AudioCaps (Kim et al., 2019): captions for 10 s AudioSet clips from YouTube.

  python data/audiocaps.py --download_dir=~/downloads/audiocaps --out=~/corpora

Licence: the captions are MIT-licensed (github.com/cdjkim/audiocaps); the audio is
YouTube's and is not distributed with them: you obtain it yourself (the AudioCaps
authors share it on request through the form in that repository's README, or a
downloader such as yt-dlp fetches each youtube_id from start_time for 10 s). Clips that
are no longer on YouTube are simply missing: the build counts them, reports them and
lists them in ``<dataset>/missing_audio.tsv``.

Layout expected under --download_dir:
  train.csv, val.csv, test.csv   header: audiocap_id,youtube_id,start_time,caption
      (from the repository's dataset/ folder, AudioCaps 1.0: 49,838 / 495 / 975 clips,
      or dataset2.0/ for AudioCaps 2.0); one row per caption: train has one per clip,
      val and test five
  audio/**/<name>.{wav,flac,ogg,mp3}   the clips, at any depth under audio/ (e.g.
      audio/train/...), named by one of: <youtube_id>, Y<youtube_id>,
      <youtube_id>_<start_time>, Y<youtube_id>_<start>.000_<start+10>.000 (AudioSet's
      style); where a name occurs twice, the file under a folder named like the split
      (train / val / test) is taken
  --audio_dir points elsewhere; --full_videos says the files are whole videos, cut to
  [start_time, start_time + 10 s)

Splits: AudioCaps' own: train -> ``train``, val -> ``validation``, test -> ``test``.
Captions: the real captions of each clip (rows grouped by youtube_id and start_time).
Metadata: youtube_id, start_time, audiocap_ids (one per caption), plus file and
original_sample_rate.
Tasks: none (evaluated by retrieval).
"""

import collections
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data import _common  # noqa: E402

SPLITS = {"train": "train", "val": "validation", "test": "test"}
COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
CLIP_SECONDS = 10.0


def add_flags(p):
  p.add_argument("--audio_dir", default=None,
                 help="folder holding the clips you obtained (default <download_dir>/audio)")
  p.add_argument("--full_videos", action="store_true",
                 help="the audio files are whole videos: cut [start_time, start_time+10 s)")


def _names(youtube_id: str, start: float) -> list[str]:
  s = int(start) if start == int(start) else start
  return [youtube_id, f"Y{youtube_id}", f"{youtube_id}_{s}",
          f"Y{youtube_id}_{start:.3f}_{start + CLIP_SECONDS:.3f}"]


def list_clips(args, skips):
  root = args.download_dir
  audio_dir = os.path.abspath(os.path.expanduser(args.audio_dir or os.path.join(root, "audio")))
  index = collections.defaultdict(list)   # file stem -> paths
  if os.path.isdir(audio_dir):
    for path in _common.files(audio_dir, SUFFIXES):
      index[os.path.splitext(os.path.basename(path))[0]].append(path)
  splits = {}
  for name, split in SPLITS.items():
    csv_path = os.path.join(root, f"{name}.csv")
    if not os.path.exists(csv_path):
      continue
    groups = {}   # (youtube_id, start) -> rows, in the CSV's order
    for line, row in enumerate(_common.read_csv(csv_path, COLUMNS), start=2):
      try:
        start = float(row["start_time"])
      except ValueError:
        skips.skip(f"{name}.csv:{line}", _common.BadRecord(
            f"start_time {row['start_time']!r} is not a number"))
        continue
      groups.setdefault((row["youtube_id"], start), []).append(row)
    clips = splits[split] = []
    for (youtube_id, start), rows in groups.items():
      found = [p for n in _names(youtube_id, start) for p in index.get(n, ())]
      in_split = [p for p in found if name in os.path.relpath(p, audio_dir).split(os.sep)[:-1]]
      path = (in_split or found or [None])[0]
      s = int(start) if start == int(start) else start
      clips.append(_common.Clip(
          id=f"{youtube_id}_{s}", path=path, captions=tuple(r["caption"] for r in rows),
          metadata=dict(youtube_id=youtube_id, start_time=start,
                        audiocap_ids=[r["audiocap_id"] for r in rows]),
          start=start if args.full_videos else None,
          end=start + CLIP_SECONDS if args.full_videos else None,
          error=None if path else (f"audio not obtained: no file for youtube_id "
                                   f"'{youtube_id}' under '{audio_dir}'")))
  return splits


CORPUS = _common.Corpus("audiocaps", __doc__, list_clips, {}, add_flags)

if __name__ == "__main__":
  sys.exit(_common.main(CORPUS))

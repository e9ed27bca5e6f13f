"""data/ builders on miniature fake downloads laid out like the real ones (TFDS's dummy-data
tests, without TensorFlow): real file names and CSV headers, a few generated clips, and
the bad files a real download has. Each is built, read back with ``records.open_split``
and ``records.read_tasks``, and checked for its splits, captions, metadata, tasks and
counted skips."""

import os
import sys

import numpy as np
import pytest
import soundfile as sf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data import (_common, audiocaps, clotho, coswara, coughvid, crema_d, esc50,  # noqa: E402
                  icbhi, libritts_p, paraspeechcaps, ravdess)
from jaxclap.corpus import records  # noqa: E402


def _wav(path, sr=16000, seconds=0.3, freq=220.0, channels=1):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  t = np.arange(int(sr * seconds)) / sr
  x = (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
  sf.write(path, np.stack([x, x], 1) if channels == 2 else x, sr, subtype="PCM_16")


def _write(path, text, encoding="utf-8"):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding=encoding, newline="") as f:
    f.write(text)


def _build(builder, download, out, *extra):
  rc = _common.main(builder.CORPUS, ["--download_dir", str(download), "--out", str(out), *extra])
  assert rc == 0
  path = os.path.join(str(out), builder.CORPUS.name, "1.0.0")
  return path


def _read(path, split):
  src = records.open_split(path, split)
  return {r["id"]: r for r in (records.decode(src[i]) for i in range(len(src)))}


def _splits(path):
  import json
  with open(os.path.join(path, "dataset_info.json")) as f:
    return sorted(s["name"] for s in json.load(f)["splits"])


def _esc50_tree(tmp_path):
  d = tmp_path / "ESC-50-master"
  rows = [("1-100032-A-0.wav", 1, 0, "dog", "True", "100032", "A"),
          ("1-115545-A-48.wav", 1, 48, "fireworks", "False", "115545", "A"),
          ("2-102414-C-17.wav", 2, 17, "pouring_water", "False", "102414", "C"),
          ("5-9032-A-0.wav", 5, 0, "dog", "True", "9032", "A"),
          ("3-1-A-1.wav", 3, 1, "rooster", "True", "1", "A"),        # file missing
          ("4-2-A-30.wav", 4, 30, "door_wood_knock", "False", "2", "A"),  # silent file
          ("4-3-A-3.wav", 4, 3, "dog", "False", "3", "A"),          # target != category
          ("3-4-A-2.wav", 3, 2, "pig", "False", "4", "A"),
          ("4-5-B-2.wav", 4, 2, "pig", "False", "5", "B")]
  lines = ["filename,fold,target,category,esc10,src_file,take"]
  lines += [",".join(map(str, r)) for r in rows]
  _write(d / "meta" / "esc50.csv", "\n".join(lines) + "\n")
  for i, r in enumerate(rows):
    if r[0] not in ("3-1-A-1.wav", "4-2-A-30.wav"):
      _wav(d / "audio" / r[0], sr=44100, seconds=0.25, freq=300 + 50 * i)
  sf.write(d / "audio" / "4-2-A-30.wav", np.zeros(4410, np.float32), 44100)
  _wav(d / "audio" / "9-999-A-9.wav", sr=44100)   # not in the CSV
  return d


def test_esc50(tmp_path, capsys):
  d = _esc50_tree(tmp_path)
  path = _build(esc50, d, tmp_path / "out")
  out = capsys.readouterr().out
  assert "listed files kept: 8, skipped: 2" in out
  assert "fold3 clips kept: 1, skipped: 1" in out and "fold4 clips kept: 1, skipped: 1" in out
  assert _splits(path) == ["fold1", "fold2", "fold3", "fold4", "fold5"]
  fold1 = _read(path, "fold1")
  assert sorted(fold1) == ["1-100032-A-0", "1-115545-A-48"]
  dog = fold1["1-100032-A-0"]
  assert dog["captions"] == ["This is a sound of dog."]
  assert dog["sample_rate"] == 16000 and len(dog["audio"]) == 4000   # 0.25 s at 16 kHz
  assert dog["metadata"] == dict(fold=1, target=0, category="dog", esc10=True,
                                 src_file="100032", take="A", esc10_category="dog",
                                 file="audio/1-100032-A-0.wav", original_sample_rate=44100)
  assert _read(path, "fold2")["2-102414-C-17"]["captions"] == ["This is a sound of pouring water."]
  assert fold1["1-115545-A-48"]["metadata"]["esc10_category"] is None
  tasks = records.read_tasks(path)
  assert set(tasks["multiclass"]) == {"esc50", "esc10"} and not tasks["binary"]
  t = tasks["multiclass"]["esc50"]
  assert len(t.classes) == 50 and t.classes[48] == "fireworks"
  assert t.prompts[30] == "This is a sound of door wood knock."
  assert len(tasks["multiclass"]["esc10"].classes) == 10
  with open(os.path.join(path, _common.MISSING_FILE)) as f:
    assert "fold3\t3-1-A-1\tno file" in f.read()
  # Building again refuses to overwrite without the flag; a wrong folder names the file.
  assert _common.main(esc50.CORPUS, ["--download_dir", str(d), "--out", str(tmp_path / "out")]) == 2
  assert "--overwrite" in capsys.readouterr().err
  assert _common.main(esc50.CORPUS, ["--download_dir", str(tmp_path), "--out", str(tmp_path / "o2")]) == 2
  assert "meta/esc50.csv: no such file" in capsys.readouterr().err



def test_a_builder_on_beam_writes_the_same_corpus(tmp_path, capsys):
  """--beam (here Beam's in-process DirectRunner) gives the single-process corpus: the
  records in order, tasks.json, missing_audio.tsv and the report. ~5 s."""
  pytest.importorskip("apache_beam", reason="apache-beam is the 'beam' extra")
  d = _esc50_tree(tmp_path)
  one = _build(esc50, d, tmp_path / "one")
  report_one = capsys.readouterr().out
  two = _build(esc50, d, tmp_path / "two", "--beam", "--shard_clips=1",
               "--direct_running_mode=in_memory", "--direct_num_workers=1")
  report_two = capsys.readouterr().out
  assert _splits(one) == _splits(two)
  for split in _splits(one):
    a, b = records.open_split(one, split), records.open_split(two, split)
    assert [records.decode(a[i])["id"] for i in range(len(a))] == \
        [records.decode(b[i])["id"] for i in range(len(b))]
    for i in range(len(a)):
      x, y = records.decode(a[i]), records.decode(b[i])
      assert x["metadata"] == y["metadata"] and x["captions"] == y["captions"]
      np.testing.assert_array_equal(x["audio"], y["audio"])
  assert records.read_tasks(one) == records.read_tasks(two)
  for f in (_common.MISSING_FILE,):
    assert open(os.path.join(one, f)).read() == open(os.path.join(two, f)).read()
  cut = lambda out: out[out.index("fold1 clips"):out.index("clips whose audio")]
  assert cut(report_one) == cut(report_two)

def test_esc50_on_error_raise_names_the_file(tmp_path):
  d = tmp_path / "ESC-50-master"
  _write(d / "meta" / "esc50.csv", "filename,fold,target,category,esc10,src_file,take\n"
         "1-100032-A-0.wav,1,0,dog,True,100032,A\n")
  (d / "audio").mkdir()
  (d / "audio" / "1-100032-A-0.wav").write_bytes(b"RIFF\x00\x00not a wave file" * 10)
  args = _common.parser(esc50.CORPUS).parse_args(
      ["--download_dir", str(d), "--out", str(tmp_path / "o"), "--on_error", "raise"])
  with pytest.raises(records.BadRecord, match=r"1-100032-A-0 \(audio/1-100032-A-0.wav\)"):
    _common.build(esc50.CORPUS, args)


def test_crema_d(tmp_path, capsys):
  d = tmp_path / "CREMA-D"
  # 5 men and 5 women: per sex 3 train, 1 validation, 1 test (ceil 10%, ceil 20%).
  actors = [(1001 + i, 20 + 5 * i, "Male" if i % 2 == 0 else "Female") for i in range(10)]
  _write(d / "VideoDemographics.csv", "ActorID,Age,Sex,Race,Ethnicity\n" + "".join(
      f"{a},{age},{sex},Caucasian,Not Hispanic\n" for a, age, sex in actors))
  for a, _, _ in actors:
    _wav(d / "AudioWAV" / f"{a}_DFA_ANG_XX.wav", freq=200 + a % 100)
  _wav(d / "AudioWAV" / "1002_IEO_HAP_HI.wav")
  (d / "AudioWAV" / "1003_MTI_SAD_XX.wav").write_bytes(b"")    # as 1076_MTI_SAD_XX.wav is
  _wav(d / "AudioWAV" / "1099_DFA_ANG_XX.wav")                  # actor not in the CSV
  _wav(d / "AudioWAV" / "1001_DFA_ANGRY_XX.wav")                # not the naming scheme
  path = _build(crema_d, d, tmp_path / "out")
  out = capsys.readouterr().out
  assert "listed files kept: 12, skipped: 2" in out
  assert "audio file is empty" in out
  got = {s: _read(path, s) for s in ("train", "validation", "test")}
  speakers = {s: {r["metadata"]["speaker"] for r in g.values()} for s, g in got.items()}
  assert speakers == {"train": {"1001", "1002", "1003", "1004", "1005", "1006"},
                      "validation": {"1007", "1008"}, "test": {"1009", "1010"}}
  r = got["train"]["1002_IEO_HAP_HI"]
  assert r["captions"] == ['A 25-year-old woman says "It\'s eleven o\'clock." in a happy voice.',
                           "A woman speaking in a very happy voice."]
  m = r["metadata"]
  assert (m["emotion"], m["level"], m["sex"], m["age"], m["sentence"]) == \
      ("happy", "high", "female", 25, "IEO")
  assert got["test"]["1009_DFA_ANG_XX"]["captions"][1] == "A man speaking in an angry voice."
  assert "1003_MTI_SAD_XX" not in got["train"]
  tasks = records.read_tasks(path)
  assert tasks["multiclass"]["emotion"].classes == ("angry", "disgusted", "fearful", "happy",
                                                   "neutral", "sad")
  assert tasks["multiclass"]["emotion"].prompts[0] == "A person speaking in an angry voice."
  assert tasks["binary"]["sex"].positive == ("male",) and tasks["graded"]["age"].key == "age"


def test_ravdess(tmp_path, capsys):
  d = tmp_path / "RAVDESS"
  names = ["03-01-05-01-02-01-12", "03-01-02-02-01-02-21", "03-02-04-01-01-01-23",
           "03-01-01-01-01-01-24", "03-01-08-02-02-02-01"]
  for i, n in enumerate(names):
    _wav(d / f"Actor_{n[-2:]}" / f"{n}.wav", sr=48000, seconds=0.2, freq=250 + 40 * i,
         channels=2 if i == 0 else 1)
  _wav(d / "Actor_25" / "03-01-05-01-02-01-25.wav", sr=48000)    # actor outside 1-24
  _wav(d / "Actor_01" / "02-01-05-01-02-01-01.wav", sr=48000)    # video-only modality
  (d / "Actor_01" / "01-01-05-01-02-01-01.mp4").write_bytes(b"video")   # ignored
  path = _build(ravdess, d, tmp_path / "out")
  assert "listed files kept: 5, skipped: 2" in capsys.readouterr().out
  got = {s: _read(path, s) for s in ("train", "validation", "test")}
  assert sorted(got["train"]) == ["03-01-05-01-02-01-12", "03-01-08-02-02-02-01"]
  assert sorted(got["validation"]) == ["03-01-02-02-01-02-21"]
  assert sorted(got["test"]) == ["03-01-01-01-01-01-24", "03-02-04-01-01-01-23"]
  r = got["train"]["03-01-05-01-02-01-12"]
  assert r["metadata"]["emotion"] == "angry" and r["metadata"]["sex"] == "female"
  assert r["metadata"]["statement"] == 2 and r["metadata"]["original_sample_rate"] == 48000
  assert r["captions"][0] == 'A woman says "Dogs are sitting by the door." in an angry voice.'
  song = got["test"]["03-02-04-01-01-01-23"]
  assert song["metadata"]["vocal_channel"] == "song" and song["metadata"]["sex"] == "male"
  assert song["captions"][1] == "A man singing in a sad voice."
  assert got["validation"]["03-01-02-02-01-02-21"]["captions"][1] == \
      "A man speaking in a strongly calm voice."
  tasks = records.read_tasks(path)
  assert len(tasks["multiclass"]["emotion"].classes) == 8
  assert set(tasks["binary"]) == {"sex", "intensity", "singing"}


def test_clotho(tmp_path, capsys):
  d = tmp_path / "clotho"
  caps = lambda n: ",".join(f'"{n} caption {i}, with a comma"' for i in range(1, 6))
  header = "file_name,caption_1,caption_2,caption_3,caption_4,caption_5\n"
  meta_header = ("file_name,keywords,sound_id,sound_link,start_end_samples,manufacturer,"
                 "license\n")
  for k, (split, files) in enumerate({"development": ["Distorted AM Radio noise.wav",
                                                      "birds_in_the_park.wav"],
                                      "validation": ["Creaking door.wav"],
                                      "evaluation": ["rain on tin roof.wav", "absent.wav"]}.items()):
    _write(d / f"clotho_captions_{split}.csv",
           header + "".join(f"{f},{caps(f[:-4])}\n" for f in files))
    _write(d / f"clotho_metadata_{split}.csv", meta_header + "".join(
        f'{f},"radio;noise;caf\u00e9",{100 + i},https://freesound.org/people/x/sounds/{100 + i}/,'
        f'"[0, 441000]",x,http://creativecommons.org/licenses/by/3.0/\n'
        for i, f in enumerate(files)), encoding="ISO-8859-1")
    for i, f in enumerate(files):
      if f != "absent.wav":
        _wav(d / split / f, sr=44100, seconds=0.3, freq=200 + 70 * k + 30 * i)
  _wav(d / "development" / "stray.wav", sr=44100)
  path = _build(clotho, d, tmp_path / "out")
  out = capsys.readouterr().out
  assert "listed files kept: 5, skipped: 1" in out and "test clips kept: 1, skipped: 1" in out
  train = _read(path, "train")
  r = train["development/Distorted AM Radio noise"]
  assert r["captions"] == [f"Distorted AM Radio noise caption {i}, with a comma"
                           for i in range(1, 6)]
  assert r["metadata"]["keywords"] == ["radio", "noise", "caf\u00e9"]
  assert r["metadata"]["clotho_split"] == "development"
  assert r["metadata"]["license"] == "http://creativecommons.org/licenses/by/3.0/"
  assert r["metadata"]["file"] == "development/Distorted AM Radio noise.wav"
  assert list(_read(path, "validation")) == ["validation/Creaking door"]
  assert list(_read(path, "test")) == ["evaluation/rain on tin roof"]
  assert records.read_tasks(path) == {"binary": {}, "multiclass": {}, "graded": {}}


def test_audiocaps_counts_missing_clips(tmp_path, capsys):
  d = tmp_path / "audiocaps"
  header = "audiocap_id,youtube_id,start_time,caption\n"
  _write(d / "train.csv", header + "91139,r1ItJ0Ca1s0,30,A woman talks nearby as water pours\n"
         "58146,--0w1YA1Hm4,30,A vehicle driving as a man speaks\n"
         "11111,gone_forever,0,This clip is no longer on YouTube\n")
  _write(d / "val.csv", header + "".join(
      f"{97150 + i},-nQHwrRLfc0,70,A train horn sounds number {i}\n" for i in range(5)))
  _write(d / "test.csv", header + "".join(
      f"{103549 + i},0BRXJHRNGQ3,25,Water drips caption {i}\n" for i in range(5)) +
      "1,missing_test,10,Nobody downloaded this\n")
  _wav(d / "audio" / "train" / "r1ItJ0Ca1s0.wav", sr=32000, seconds=0.3)
  _wav(d / "audio" / "train" / "Y--0w1YA1Hm4_30.000_40.000.wav", sr=16000, seconds=0.3)
  _wav(d / "audio" / "val" / "-nQHwrRLfc0_70.wav", sr=44100, seconds=0.3)
  _wav(d / "audio" / "test" / "Y0BRXJHRNGQ3.wav", sr=16000, seconds=0.3)
  path = _build(audiocaps, d, tmp_path / "out")
  out = capsys.readouterr().out
  assert "train clips kept: 2, skipped: 1" in out and "test clips kept: 1, skipped: 1" in out
  assert "audio not obtained" in out and _common.MISSING_FILE in out
  train = _read(path, "train")
  assert sorted(train) == ["--0w1YA1Hm4_30", "r1ItJ0Ca1s0_30"]
  assert train["r1ItJ0Ca1s0_30"]["captions"] == ["A woman talks nearby as water pours"]
  assert train["r1ItJ0Ca1s0_30"]["metadata"]["file"] == "audio/train/r1ItJ0Ca1s0.wav"
  val = _read(path, "validation")["-nQHwrRLfc0_70"]
  assert len(val["captions"]) == 5 and val["metadata"]["audiocap_ids"][0] == "97150"
  assert val["metadata"]["start_time"] == 70.0
  with open(os.path.join(path, _common.MISSING_FILE)) as f:
    missing = f.read().splitlines()[1:]
  assert [m.split("\t")[:2] for m in missing] == [["train", "gone_forever_0"],
                                                 ["test", "missing_test_10"]]


def test_audiocaps_full_videos_are_cut(tmp_path, capsys):
  d = tmp_path / "audiocaps"
  _write(d / "test.csv", "audiocap_id,youtube_id,start_time,caption\n"
         "5,abcdefghijk,2,A dog barks\n")
  _write(d / "val.csv", "audiocap_id,youtube_id,start_time,caption\n"
         "6,notobtained,2,A cat meows\n")
  _wav(d / "audio" / "abcdefghijk.wav", sr=8000, seconds=13.0)
  path = _build(audiocaps, d, tmp_path / "out", "--full_videos")
  assert len(_read(path, "test")["abcdefghijk_2"]["audio"]) == 10 * 16000
  assert _splits(path) == ["test"]    # no val clip was obtained: the split is left out
  assert "validation clips kept: 0, skipped: 1" in capsys.readouterr().out


def test_speaker_splits_are_disjoint_and_cover_each_group():
  split = _common.speaker_splits({"male": [f"m{i:02d}" for i in range(48)],
                                  "female": [f"f{i:02d}" for i in range(43)]})
  for sex in "mf":
    got = [split[s] for s in sorted(split) if s.startswith(sex)]
    assert set(got) == {"train", "validation", "test"}
    assert got == sorted(got, key=["train", "validation", "test"].index)
  assert sum(v == "test" for v in split.values()) == 10 + 9


def test_icbhi_cycles(tmp_path, capsys):
  d = tmp_path / "ICBHI_final_database"
  recs = {"101_1b1_Al_sc_Meditron": (4000, "test"), "107_2b3_Tc_mc_AKGC417L": (44100, "train"),
          "130_1p2_Pl_mc_LittC2SE": (4000, "train")}
  for i, (name, (sr, _)) in enumerate(recs.items()):
    _wav(d / f"{name}.wav", sr=sr, seconds=2.0, freq=150 + 50 * i)
  _write(d / "101_1b1_Al_sc_Meditron.txt", "0.036\t0.579\t0\t0\n0.579\t1.2\t1\t0\n")
  _write(d / "107_2b3_Tc_mc_AKGC417L.txt", "0.2\t1.0\t1\t1\n1.5\t1.4\t0\t0\nbroken line\n")
  # 130 has no annotation file; 199 is not in the split file.
  _wav(d / "199_1b1_Ar_sc_Meditron.wav", sr=4000)
  _write(d / "199_1b1_Ar_sc_Meditron.txt", "0.0\t0.2\t0\t1\n")
  _write(d / "ICBHI_challenge_train_test.txt",
         "".join(f"{n}\t{s}\n" for n, (_, s) in recs.items()))
  _write(d / "ICBHI_Challenge_diagnosis.txt", "101\tURTI\n107\tCOPD\n130\tCOPD\n")
  path = _build(icbhi, d, tmp_path / "out")
  assert "listed files kept: 3, skipped: 4" in capsys.readouterr().out
  test = _read(path, "test")
  assert sorted(test) == ["101_1b1_Al_sc_Meditron/00", "101_1b1_Al_sc_Meditron/01"]
  c = test["101_1b1_Al_sc_Meditron/01"]
  assert abs(len(c["audio"]) / 16000 - (1.2 - 0.579)) < 0.01      # the cycle, not the file
  assert c["captions"] == ["Breathing sounds with crackles.",
                           "A respiratory cycle recorded at the anterior left chest with "
                           "a Meditron stethoscope."]
  m = c["metadata"]
  assert (m["label"], m["crackles"], m["wheezes"], m["diagnosis"], m["patient"]) == \
      ("crackle", True, False, "URTI", "101")
  train = _read(path, "train")
  assert list(train) == ["107_2b3_Tc_mc_AKGC417L/00"]
  assert train["107_2b3_Tc_mc_AKGC417L/00"]["metadata"]["label"] == "both"
  tasks = records.read_tasks(path)
  assert tasks["multiclass"]["cycle"].classes == ("normal", "crackle", "wheeze", "both")
  assert tasks["binary"]["crackles"].positive == (True,)


def test_coughvid(tmp_path, capsys):
  d = tmp_path / "coughvid_20211012"
  header = (",uuid,datetime,cough_detected,latitude,longitude,age,gender,"
            "respiratory_condition,fever_muscle_pain,status,status_SSL,quality_1,"
            "cough_type_1,diagnosis_1\n")
  rows = [  # uuid, cough_detected, age, gender, status, cough_type_1, audio suffix
      ("00039425-7f3a-434a-8b7f-0b7e0a6c0a5e", "0.9859", "34", "male", "COVID-19", "wet", ".ogg"),
      ("0007c6f1-5441-40e6-9aaf-a761d8f2da3b", "0.9", "", "female", "healthy", "", ".wav"),
      ("0009eb28-d8be-4dc1-92bb-907e53bc5c7a", "0.95", "51", "female", "healthy", "dry", ".wav"),
      ("001328dc-ea5d-4847-9ccf-c5aa2a3f2d0f", "0.99", "20", "male", "healthy", "", ".wav"),
      ("00140a4a-4b43-4a82-8a4f-2a5c7e1b2d7a", "0.03", "40", "male", "healthy", "", ".wav"),
      ("0019e0e8-7a5a-4e7f-bd2c-3c8b1a1c0f11", "0.97", "25", "other", "", "", None),
  ]
  _write(d / "metadata_compiled.csv", header + "".join(
      f"{i},{u},2020-04-13T21:30:59.801831+00:00,{c},,,{a},{g},False,True,{s},,good,{t},\n"
      for i, (u, c, a, g, s, t, _) in enumerate(rows)))
  for i, (u, *_, suffix) in enumerate(rows):
    if suffix == ".ogg":
      sf.write(d / f"{u}.ogg", 0.3 * np.sin(np.arange(14400) / 20.0), 48000, format="OGG")
      (d / f"{u}.json").write_text("{}")
    elif suffix:
      _wav(d / f"{u}{suffix}", sr=48000, freq=300 + 20 * i)
  path = _build(coughvid, d, tmp_path / "out")
  out = capsys.readouterr().out
  assert "listed files kept: 5, skipped: 1" in out and "min_cough_detected" in out
  got = {s: _read(path, s) for s in _splits(path)}
  everything = {k: v for g in got.values() for k, v in g.items()}
  assert sorted(everything) == sorted(r[0] for r in rows[:4])   # the 6th has no audio
  covid = everything[rows[0][0]]
  assert covid["captions"] == ["A cough from a 34-year-old man who reports having COVID-19.",
                               "A wet cough."]
  assert covid["metadata"]["status"] == "COVID-19" and covid["metadata"]["fever_muscle_pain"]
  assert covid["metadata"]["file"].endswith(".ogg")
  assert everything[rows[1][0]]["captions"] == ["A cough from a woman who reports being healthy."]
  assert everything[rows[1][0]]["metadata"]["age"] is None
  # Three healthy uuids: sorted, the last one test, the one before validation.
  assert rows[3][0] in got["test"] and rows[2][0] in got["validation"]
  assert rows[1][0] in got["train"]
  tasks = records.read_tasks(path)
  assert set(tasks["binary"]) == {"covid", "symptomatic", "sex", "wet_cough"}


def test_coswara(tmp_path, capsys):
  d = tmp_path / "Coswara-Data"
  people = [("DRBAZX64nuVtqBQf13gH7r36Mh52", "26", "healthy", "female"),
            ("xa2v8z3Yzgb9dFrq2gEZz6oS7fh1", "", "positive_mild", "male"),
            ("y0TkG5sfyhadW3VSct50RTl3HN02", "24", "positive_mild", "male")]
  _write(d / "combined_data.csv",
         "id,a,covid_status,ep,g,l_c,l_l,l_s,rU,asthma,cough,smoker\n" + "".join(
             f"{i},{a},{s},y,{g},India,Kolkata,West Bengal,n,,True,\n" for i, a, s, g in people))
  for k, (pid, *_) in enumerate(people):
    for j, kind in enumerate(("cough-heavy", "vowel-e")):
      _wav(d / "Extracted_data" / "20200413" / pid / f"{kind}.wav", sr=48000,
           freq=200 + 30 * k + 10 * j)
  _wav(d / "Extracted_data" / "20200413" / people[0][0] / "cough-heavy-2.wav", sr=48000)
  _wav(d / "Extracted_data" / "20200415" / "notInTheCsv" / "cough-heavy.wav", sr=48000)
  (d / "Extracted_data" / "20200413" / people[1][0] / "vowel-e.wav").write_bytes(b"")
  path = _build(coswara, d, tmp_path / "out")
  out = capsys.readouterr().out
  assert "listed files kept: 6, skipped: 2" in out and "audio file is empty" in out
  got = {s: _read(path, s) for s in _splits(path)}
  # positive_mild: 2 participants -> sorted, the last test, the one before validation;
  # the single healthy one is test.
  assert sorted(got["test"]) == [f"{people[0][0]}/cough-heavy", f"{people[0][0]}/vowel-e",
                                 f"{people[2][0]}/cough-heavy", f"{people[2][0]}/vowel-e"]
  assert sorted(got["validation"]) == [f"{people[1][0]}/cough-heavy"]
  r = got["test"][f"{people[0][0]}/cough-heavy"]
  assert r["captions"] == ["A 26-year-old woman coughing heavily.",
                           "A cough from a person who reports being healthy."]
  m = r["metadata"]
  assert (m["covid"], m["gender"], m["date"], m["cough"], m["asthma"]) == \
      ("negative", "female", "20200413", True, None)
  assert got["validation"][f"{people[1][0]}/cough-heavy"]["captions"][0] == "A man coughing heavily."
  tasks = records.read_tasks(path)
  assert tasks["binary"]["covid"].positive == ("positive_mild", "positive_moderate",
                                                "positive_asymp")
  assert len(tasks["multiclass"]["kind"].classes) == 9


def test_libritts_p(tmp_path, capsys):
  d = tmp_path / "LibriTTS-P"
  audio = tmp_path / "LibriTTS_R"
  cols = ("item_name,spk_id,gender,pitch,speaking_speed,energy,content_prompt,"
          "style_prompt_key,raw_f0_mean,raw_f0_scale,raw_lf0_mean,raw_lf0_scale,"
          "raw_speaking_rate,raw_loudness_lufs,raw_loudness_mean,raw_loudness_scale,invalid\n")
  items = [("1034_121119_000001_000001", "1034", "M_p-low_s-slow_e-normal", "train-clean-100", "0"),
           ("2035_147960_000002_000000", "2035", "F_p-high_s-fast_e-high", "dev-clean", "0"),
           ("1089_134686_000001_000001", "1089", "M_p-normal_s-normal_e-low", "test-clean", "0"),
           ("1034_121119_000002_000000", "1034", "M_p-low_s-slow_e-normal", "train-clean-100", "1"),
           ("7777_1_000001_000001", "7777", "F_p-low_s-slow_e-low", "train-other-500", "0"),
           ("3000_15664_000003_000001", "3000", "M_p-low_s-slow_e-low", None, "0")]
  _write(d / "data" / "metadata_w_style_prompt_tags_v230922.csv", cols + "".join(
      f"{i},{s},x,x,x,x,content,{k},120.5,10,4.8,0.1,4.2,-23.1,-30,5,{inv}\n"
      for i, s, k, _, inv in items))
  keys = {k for _, _, k, _, _ in items}
  _write(d / "data" / "style_prompt_candidates_v230922.csv", "".join(
      f"{k}|" + ";".join(f"{k} prompt {n}" for n in range(7)) + "\n" for k in sorted(keys)))
  _write(d / "data" / "df1_en.csv", "1034|very masculine,slightly thick,tensed\n"
         "2035|feminine,slightly young\n")
  _write(d / "data" / "df2_en.csv", "1034|masculine,middle-aged\n")
  _write(d / "data" / "excluded_spk_list.txt", "7777\n")
  for i, (item, spk, _, subset, _) in enumerate(items):
    if subset:
      _wav(audio / subset / spk / item.split("_")[1] / f"{item}.wav", sr=24000, freq=180 + 30 * i)
  path = _build(libritts_p, d, tmp_path / "out", "--audio_dir", str(audio), "--style_prompts", "2")
  out = capsys.readouterr().out
  assert "listed files kept: 3, skipped: 3" in out
  for reason in ("flagged invalid", "excluded_spk_list.txt", "not downloaded"):
    assert reason in out
  train, val = _read(path, "train"), _read(path, "validation")
  r = train["1034_121119_000001_000001"]
  assert len(r["captions"]) == 4 and all("M_p-low_s-slow_e-normal prompt" in c
                                         for c in r["captions"][:2])
  assert r["captions"][2:] == ["A voice that is very masculine, slightly thick, tensed.",
                               "A voice that is masculine, middle-aged."]
  m = r["metadata"]
  assert (m["gender"], m["pitch"], m["speed"], m["energy"], m["subset"]) == \
      ("male", "low", "slow", "normal", "train-clean-100")
  assert m["raw_f0_mean"] == 120.5 and m["raw_loudness_lufs"] == -23.1
  assert val["2035_147960_000002_000000"]["metadata"]["pitch"] == "high"
  assert list(_read(path, "test")) == ["1089_134686_000001_000001"]
  # The hash choice of prompts is stable: a rebuild gives the same captions.
  path2 = _build(libritts_p, d, tmp_path / "out2", "--audio_dir", str(audio), "--style_prompts", "2")
  assert _read(path2, "train")["1034_121119_000001_000001"]["captions"] == r["captions"]
  tasks = records.read_tasks(path)
  assert set(tasks["graded"]) == {"f0", "speaking_rate", "loudness"}
  assert tasks["multiclass"]["speed"].classes == ("slow", "normal", "fast")
  assert libritts_p.parse_key("F_p-normal_s-fast_e-low") == dict(
      gender="female", pitch="normal", speed="fast", energy="low")
  with pytest.raises(ValueError):
    libritts_p.parse_key("M_p-low_s-slow")


def test_paraspeechcaps(tmp_path, capsys):
  """The release's parquet files (its real columns) and audio from three of the four
  source corpora, laid out as its dataset/README.md says; Expresso's root not given."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  d = tmp_path / "paraspeechcaps"
  roots = {s: tmp_path / s for s in ("voxceleb", "ears", "emilia")}

  def row(source, rel, captions, spk, gender="male", pitch="low-pitched", rate="slow speed",
          intrinsic=None, situational=None):
    return dict(source=source, relative_audio_path=rel, text_description=captions,
                transcription="some words", intrinsic_tags=intrinsic,
                situational_tags=situational, basic_tags=[pitch, rate],
                all_tags=(intrinsic or []) + (situational or []) + [pitch, rate],
                speakerid=spk, name=f"name of {spk}", duration=0.3, gender=gender,
                accent=None, pitch=pitch, speaking_rate=rate, noise="clean environment",
                utterance_pitch_mean=110.5, snr=41.0, phonemes="s ʌ m")

  vox = "voxceleb1/dev/wav/id10001/1zcIwhmdeo4/00001.wav"
  emilia = "EN/EN_B00030/EN_B00030_S01984/mp3/EN_B00030_S01984_W000037.mp3"
  files = {
      "train_base-00000-of-00001": [
          row("voxceleb", vox, ["A man with a guttural voice.", "A deep, guttural voice."],
              "id10001", intrinsic=["guttural"]),
          row("ears", "p001/emo_adoration_freeform.wav", ["A woman speaking adoringly."],
              "p001", gender="female", pitch="high-pitched", situational=["adoring"]),
          row("expresso", "audio_48khz/read/ex01/happy/base/ex01_happy_00001.wav",
              ["Happy."], "ex01"),                                  # root not given
          row("voxceleb", "voxceleb1/dev/wav/id10002/abc/00001.wav", ["Gone."], "id10002"),
          row("librispeech", "a/b.wav", ["Not a source."], "x"),     # unknown source
          row("ears", "../../etc/passwd", ["Escapes."], "p002"),    # not inside the root
      ],
      "dev-00000-of-00001": [row("emilia", emilia, ["A fast, clear voice."], "EN_B00030_S01984",
                                 rate="fast speed")],
      "holdout-00000-of-00001": [row("ears", "p107/sentences_01_loud.wav", [], "p107")],
  }
  for name, rows in files.items():
    os.makedirs(d / "data", exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), d / "data" / f"{name}.parquet")
  _wav(roots["voxceleb"] / vox, sr=16000)
  _wav(roots["ears"] / "p001/emo_adoration_freeform.wav", sr=48000, freq=400)
  _wav(roots["ears"] / "p107/sentences_01_loud.wav", sr=48000)
  os.makedirs(os.path.dirname(roots["emilia"] / emilia))
  t = np.arange(4800) / 24000
  sf.write(roots["emilia"] / emilia, 0.4 * np.sin(2 * np.pi * 300 * t), 24000, format="MP3")
  flags = [f"--{s}_root={r}" for s, r in roots.items()]
  path = _build(paraspeechcaps, d, tmp_path / "out", "--splits=train_base,dev,holdout", *flags)
  out = capsys.readouterr().out
  assert "listed files kept: 6, skipped: 2" in out          # unknown source, '..' path
  assert "train clips kept: 2, skipped: 2" in out            # expresso root, missing file
  assert "test clips kept: 0, skipped: 1" in out             # no caption
  assert _splits(path) == ["train", "validation"]            # test: every clip skipped
  train = _read(path, "train")
  assert sorted(train) == ["ears/p001/emo_adoration_freeform.wav", f"voxceleb/{vox}"]
  r = train[f"voxceleb/{vox}"]
  assert r["captions"] == ["A man with a guttural voice.", "A deep, guttural voice."]
  m = r["metadata"]
  assert (m["speaker"], m["gender"], m["pitch"], m["speaking_rate"], m["source"]) == \
      ("id10001", "male", "low-pitched", "slow speed", "voxceleb")
  assert m["intrinsic_tags"] == ["guttural"] and m["situational_tags"] == []
  assert m["utterance_pitch_mean"] == 110.5 and "phonemes" not in m
  assert m["original_sample_rate"] == 16000 and len(r["audio"]) == int(0.3 * 16000)
  assert train["ears/p001/emo_adoration_freeform.wav"]["metadata"]["original_sample_rate"] == 48000
  v = _read(path, "validation")[f"emilia/{emilia}"]
  assert v["metadata"]["speaking_rate"] == "fast speed" and v["sample_rate"] == 16000
  missing = open(os.path.join(path, _common.MISSING_FILE)).read()
  assert "no --expresso_root given" in missing and "id10002" in missing
  tasks = records.read_tasks(path)
  assert tasks["multiclass"]["pitch"].classes == paraspeechcaps.PITCH
  assert set(tasks["graded"]) == {"utterance_pitch", "snr"} and "gender" in tasks["binary"]
  with pytest.raises(FileNotFoundError, match="train_scaled"):
    _common.build(paraspeechcaps.CORPUS, _common.parser(paraspeechcaps.CORPUS).parse_args(
        ["--download_dir", str(d), "--out", str(tmp_path / "o2")]))

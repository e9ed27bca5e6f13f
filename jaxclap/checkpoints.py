"""The run folder: its config, its checkpoints, and reading a model back from them.

A run folder (``--workdir``) holds ``config.json`` (what the model is rebuilt from),
``checkpoints/<step>/`` (Orbax: item ``state`` = the whole ``TrainState``, item ``data`` =
the grain iterator's position), ``metrics.jsonl``, ``tensorboard/``, ``results.json``,
``lock`` (held by the run training in it) and, for a corpus-trained vocabulary,
``tokenizer/``. This module is the one place that opens it:

* ``manager`` / ``save`` / ``restore``: the trainer's periodic checkpoints and resume.
* ``restore_variables(workdir, abstract)``: the params and batch statistics of a run's
  latest checkpoint into given shapes/shardings (``init_from``, ``open_run``), without
  its optimiser state, step or data position.
* ``open_run(workdir)`` -> ``(config, variables)``: what inference and export need. It
  builds no optimiser and no trainer; the shapes come from the model alone.
* ``Lock``, ``check_config``, ``write_config``: one run per folder, and a folder's
  config never replaced by one its checkpoints do not match.

What a reader of a run folder can rely on:

* A checkpoint that cannot be read (truncated, zeroed, a file missing) is reported with
  its step and the file, set aside as ``checkpoints/<step>.broken`` (renamed, never
  deleted) and the next older one is used; an unfinished save
  (``<step>.orbax-checkpoint-tmp-*``, from a run killed while writing) is set aside as
  ``<step>.unfinished``. Readers (``jaxclap.load``, export, ``init_from``) rename only
  when no run holds the folder's lock (else a live save would be taken for a broken one);
  they fall back all the same. When no checkpoint reads, the error names the folder and
  what to do, and a trainer does not start afresh over the set-aside ones.
* A checkpoint that does not fit the model (another ``model.*``) is not broken: it is
  left alone and the error names the first parameter that differs, with both shapes.

* The training loop writes through ``Saver`` (never non-finite parameters; a failed
  write raises ``SaveError`` naming the folder, the space free and the checkpoint kept)
  and holds the folder with ``lock_run`` (``Lock`` on process 0, agreed by every process).

It depends on the models and on nothing that trains, so inference and export never
import the trainer.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import re
import shutil
import os
import socket
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

CONFIG_FILE = "config.json"
LOCK_FILE = "lock"
ITEMS = ("state", "data")
BROKEN, UNFINISHED = ".broken", ".unfinished"
_ORBAX_TMP = ".orbax-checkpoint-tmp"

# Fields that may differ when a run resumes: they steer the loop, its logging and its
# evaluation, not what the checkpoints hold or which data the next step reads.
# total_steps may grow or shrink (the lr schedule is recomputed from it, so a decaying
# schedule bends from the resumed step on); corpus.data_dir is where the corpus is
# cached, not what it holds (corpus.seed and corpus.scale are). Every other field must
# equal the run's config.json. The check reads what a config file and its overrides
# give, before "@corpus" is resolved to a path.
RESUMABLE = ("total_steps", "log_every", "checkpoint_every", "keep_checkpoints",
             "log_data_indices", "max_nonfinite_steps", "eval", "evals",
             "input.num_threads", "input.prefetch", "input.worker_count",
             "corpus.data_dir", "corpus.num_workers", "model.remat", "peak_tflops",
             "input.text_buckets", "frozen_cache")


class RunFolderError(RuntimeError):
  """A run folder that cannot be used as asked; the message names the folder, the file
  or field, and what to do. The trainer prints it as one line and exits."""


class ConfigMismatch(RunFolderError, ValueError):
  """A config (or model) that the run folder's checkpoints were not trained with."""


class SaveError(RunFolderError):
  """A checkpoint was not written (a write error, or non-finite parameters); the message
  names the folder and the checkpoint kept."""


def folder(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def manager(workdir: str, config: Any = None):
  """The run's ``CheckpointManager``; with ``config`` (training) it keeps
  ``config.keep_checkpoints`` and creates the folder, without (reading) it only reads."""
  import orbax.checkpoint as ocp
  if config is None:
    return ocp.CheckpointManager(folder(workdir), item_names=ITEMS)
  return ocp.CheckpointManager(
      folder(workdir), item_names=ITEMS,
      options=ocp.CheckpointManagerOptions(max_to_keep=int(config.keep_checkpoints),
                                           create=True))


def save(mgr, state: Any, data_iter) -> None:
  """Saves the train state and the grain iterator's position at ``state.step``."""
  import grain
  import orbax.checkpoint as ocp
  mgr.save(int(state.step), args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter)))


def restore(workdir: str, abstract_state: Any, data_iter) -> tuple[Any, int] | None:
  """``(state, step)`` of the newest readable checkpoint, straight into
  ``abstract_state``'s shardings (the iterator moved to its saved position in place),
  or None for a folder without checkpoints. For the trainer, which holds the folder's
  lock: unfinished saves and unreadable checkpoints are set aside (see the module
  docstring); with several processes they agree on the step (a checkpoint one of them
  cannot read is broken for all). Raises ``RunFolderError`` when none reads, or when
  only set-aside ones are left (a fresh start would bury them)."""
  import grain
  import orbax.checkpoint as ocp
  workdir = os.fspath(workdir)
  _set_aside_unfinished(workdir, always=True)

  def read(mgr, step):
    data = os.path.join(folder(workdir), str(step), "data")
    own = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if os.path.exists(os.path.join(data, own)):
      return mgr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=grain.checkpoint.CheckpointRestore(data_iter)))["state"]
    # Written by another process count: every process's iterator stood at the same
    # position (global batch s is one slice of the one global stream per process), so
    # any of its files gives this process's position.
    state = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))["state"]
    data_iter.set_state(_shared_data_position(data, step))
    if hasattr(data_iter, "start_prefetch"):   # as grain's own restore does
      data_iter.start_prefetch()
    return state

  got = _newest_readable(workdir, read, abstract_state, set_aside=True,
                         sync=jax.process_count() > 1)
  if got is None and _leftovers(workdir, BROKEN):
    raise RunFolderError(
        f"{folder(workdir)} has no readable checkpoint, only ones set aside as unreadable "
        f"({', '.join(_leftovers(workdir, BROKEN))}); a fresh start would bury them: "
        "rename one back to its step number if it can be repaired, or move the folder "
        "away (or use another --workdir) to start afresh")
  return got


def _shared_data_position(data: str, step: int) -> dict:
  """The one data position of checkpoint ``step``'s per-process iterator files."""
  names = sorted(n for n in os.listdir(data) if re.fullmatch(r"process_\d+-of-\d+\.json", n))
  if not names:
    raise RunFolderError(f"checkpoint {step}: no data position in {data}")
  states = {}
  for n in names:
    with open(os.path.join(data, n)) as f:
      states[n] = json.load(f)
  if len({json.dumps(s, sort_keys=True) for s in states.values()}) > 1:
    raise ConfigMismatch(
        f"checkpoint {step} was written by {len(names)} processes whose data positions "
        f"differ ({data}); it resumes only with that many processes")
  logging.info("checkpoint %d: data position of %d processes read into %d", step,
               len(names), jax.process_count())
  return next(iter(states.values()))


def restore_variables(workdir: str, abstract: dict, step: int | None = None,
                      field: str = "workdir") -> tuple[dict, dict, int]:
  """``(params, model_state, step)`` of a run's checkpoint (newest readable one, or
  ``step``), restored into ``abstract = {"params": ..., "model_state": ...}``
  (ShapeDtypeStructs, with shardings). The optimiser state, step counter and data
  position are not read, so the run may have used another optimiser or loss; its model
  must be this one. ``field`` names the setting the workdir came from, for the errors.
  An unreadable checkpoint is reported and the next older one read (set aside only when
  no run holds the folder)."""
  import orbax.checkpoint as ocp
  workdir = os.fspath(workdir)
  if not os.path.isdir(folder(workdir)):
    raise FileNotFoundError(f"{field}={workdir!r}: no checkpoint in {folder(workdir)}")
  with _quiet(workdir) as quiet:
    _set_aside_unfinished(workdir, always=quiet)

    def read(mgr, s):
      return mgr.restore(s, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
          partial_restore=True)))["state"]

    try:
      got = _newest_readable(workdir, read, abstract, set_aside=quiet, only=step,
                             field=field)
    except ConfigMismatch:
      raise
    except RunFolderError as e:
      raise RunFolderError(f"{field}={workdir!r}: {e}") from None
  if got is None:
    left = _leftovers(workdir, BROKEN)
    raise FileNotFoundError(
        f"{field}={workdir!r}: no checkpoint in {folder(workdir)}"
        + (f" (set aside as unreadable: {', '.join(left)})" if left else "")
        + (f" at step {step}" if step is not None else ""))
  got, step = got
  logging.info("read %s step %d", workdir, step)
  # Orbax leaves an empty subtree out: a model without batch statistics has no entry.
  model_state = dict(got["model_state"]) if abstract["model_state"] else {}
  return dict(got["params"]), model_state, step


# ------------------------------------------------------------ reading with a fallback


def _newest_readable(workdir: str, read: Callable, abstract: Any, *, set_aside: bool,
                     sync: bool = False, only: int | None = None,
                     field: str = "workdir") -> tuple[Any, int] | None:
  """``(read(mgr, step), step)`` for the newest checkpoint that reads, trying older ones
  after a failure; None when there is none. Each is first checked against ``abstract``
  from its metadata (a mismatch raises ``ConfigMismatch``: a checkpoint of another
  model is not broken)."""
  mgr = manager(workdir)
  steps = sorted(mgr.all_steps(), reverse=True)
  if only is not None:
    steps = [s for s in steps if s == int(only)]
  broken = []
  for step in steps:
    _check_fits(workdir, step, abstract, field)
    try:
      out, err = read(mgr, step), None
    except ConfigMismatch:   # not damage: another model or process count
      raise
    except Exception as e:   # whatever Orbax / tensorstore raise for a damaged file
      out, err = None, e
    if sync:
      from jax.experimental import multihost_utils
      import numpy as np
      oks = multihost_utils.process_allgather(np.int32(err is None))
      if err is None and not oks.all():
        err = RuntimeError("another process could not read it")
    if err is None:
      return out, step
    _quiet_read_noise()
    path = os.path.join(folder(workdir), str(step))
    what = _describe(err)
    # The whole traceback for whoever asks (--verbosity=1); the warning has its gist.
    logging.debug("checkpoint %d: the read failed", step, exc_info=err)
    moved = None
    if set_aside and jax.process_index() == 0:
      moved = _set_aside(path, f"{step}{BROKEN}")
    if sync:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"set aside {step}")
    broken.append(f"{step} ({what})")
    logging.warning("checkpoint %d in %s cannot be read: %s; %s; trying the one before",
                    step, folder(workdir), what,
                    f"set aside as {moved}" if moved else "left in place")
  if broken:
    raise RunFolderError(
        f"no checkpoint in {folder(workdir)} can be read: "
        + "; ".join(broken) + (". They were set aside as <step>.broken (never deleted): "
                               if set_aside else ". ")
        + "restore the folder from a copy, or move it away (or use another --workdir) "
        "to start afresh")
  return None


def _quiet_read_noise() -> None:
  """After a failed restore (or a failed write, from Saver), what Orbax prints on its own
  is dropped (to the debug log), so that the user sees our one line and not ~50
  tracebacks: its other reads of the checkpoint, still in flight, are closed unfinished,
  and each turns the GeneratorExit into an Exception (an ``except BaseException`` in
  Orbax's reader), which Python prints as "Exception ignored in: <coroutine ...>" with a
  traceback and the TensorStore spec (~60 lines each); tensorstore callbacks into the
  event loop Orbax has closed print "RuntimeError: Event loop is closed", some at exit.
  Only those two kinds are dropped: any other exception prints as before."""
  import asyncio
  import sys

  _quiet_orbax_tracebacks()

  def noise(exc) -> bool:
    if isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc):
      return True
    inner = exc   # a read closed unfinished: GeneratorExit / CancelledError inside
    while inner is not None:
      if isinstance(inner, (GeneratorExit, asyncio.CancelledError)):
        return True
      inner = inner.__cause__ or inner.__context__
    return False

  if getattr(sys.excepthook, "_jaxclap", False):
    return
  import threading
  excepthook, unraisablehook = sys.excepthook, sys.unraisablehook
  thread_hook = threading.excepthook

  def on_exception(kind, value, tb):
    if noise(value):
      logging.debug("dropped after a failed checkpoint read: %s", _first_line(value))
    else:
      excepthook(kind, value, tb)

  def on_unraisable(u):
    if noise(u.exc_value):
      logging.debug("dropped after a failed checkpoint read (in %r): %s", u.object,
                    _first_line(u.exc_value))
    else:
      unraisablehook(u)

  def on_thread(args):   # a background thread's callback into the closed loop
    if noise(args.exc_value):
      logging.debug("dropped after a failed checkpoint read or write (in thread %s): %s",
                    getattr(args.thread, "name", "?"), _first_line(args.exc_value))
    else:
      thread_hook(args)

  on_exception._jaxclap = True
  sys.excepthook, sys.unraisablehook = on_exception, on_unraisable
  threading.excepthook = on_thread


class _OrbaxTracebacks(logging.Filter):
  """Drops the records with a traceback that Orbax logs (e.g. "_SignalingThread.run()
  raised an exception", ~300 lines, when a background save fails) and that asyncio logs
  for Orbax's abandoned tasks ("Task exception was never retrieved", at exit) or for
  callbacks into the loop Orbax closed ("Event loop is closed"), unless
  the log is at debug level (--verbosity=1): the error reaches our code, which says it
  in one line."""

  def filter(self, record) -> bool:
    orbax = f"{os.sep}orbax{os.sep}"
    exc = record.exc_info[1] if record.exc_info else None
    closed = isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)
    ours = record.exc_info and (orbax in record.pathname or (record.name == "asyncio" and (
        closed or orbax in str(record.msg) + str(record.args))))
    return not (ours and logging.getLogger().getEffectiveLevel() > logging.DEBUG)


def _quiet_orbax_tracebacks() -> None:
  """Puts ``_OrbaxTracebacks`` on the root logger's handlers (absl's among them)."""
  for handler in logging.getLogger().handlers:
    if not any(isinstance(f, _OrbaxTracebacks) for f in handler.filters):
      handler.addFilter(_OrbaxTracebacks())


def _first_line(err: BaseException) -> str:
  text = (str(err).strip().splitlines() or [type(err).__name__])[0]
  return text if len(text) <= 400 else text[:400] + "..."


def _describe(err: BaseException) -> str:
  """The innermost cause's first line: tensorstore's names the entry and the file
  ("Error reading "params.x/0.0" in OCDBT database at local file ..."); Orbax's wrapper
  only dumps a spec."""
  inner = err
  while inner.__cause__ is not None or inner.__context__ is not None:
    inner = inner.__cause__ or inner.__context__
  return _first_line(inner)


def _set_aside(path: str, name: str) -> str | None:
  """Renames ``path`` to ``name`` beside it (``name.2``, ... if taken); None if the
  folder is read-only."""
  target = base = os.path.join(os.path.dirname(path), name)
  n = 1
  while os.path.exists(target):
    n += 1
    target = f"{base}.{n}"
  try:
    os.rename(path, target)
  except OSError as e:
    logging.warning("could not set %s aside: %s", path, e)
    return None
  return target


def _set_aside_unfinished(workdir: str, always: bool) -> None:
  """Sets aside the ``*.orbax-checkpoint-tmp-*`` folders of saves a killed run did not
  finish. ``always=False``: only reports them (a live run may be writing one)."""
  ckpts = folder(workdir)
  if not os.path.isdir(ckpts) or jax.process_index() != 0:
    return
  for name in sorted(os.listdir(ckpts)):
    if _ORBAX_TMP not in name or name.endswith(UNFINISHED):
      continue
    if not always:
      continue
    moved = _set_aside(os.path.join(ckpts, name), name.split(_ORBAX_TMP)[0] + UNFINISHED)
    logging.warning("%s: an unfinished checkpoint save (%s, its run was stopped while "
                    "writing it)%s", ckpts, name, f"; set aside as {moved}" if moved else "")


def _leftovers(workdir: str, suffix: str) -> list[str]:
  ckpts = folder(workdir)
  if not os.path.isdir(ckpts):
    return []
  return sorted(n for n in os.listdir(ckpts) if suffix in n)


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _leaf_shapes(tree) -> dict[str, tuple]:
  return {"/".join(_key_name(k) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
          if hasattr(leaf, "shape")}


def _check_fits(workdir: str, step: int, abstract: Any, field: str) -> None:
  """Raises ``ConfigMismatch`` naming the first leaf whose shape (or presence) differs
  between checkpoint ``step``'s metadata and ``abstract`` (its top-level parts only:
  a partial restore of params reads no optimiser). Unreadable metadata is left for the
  restore to report."""
  import orbax.checkpoint as ocp
  path = os.path.join(folder(workdir), str(step), "state")
  try:
    from etils import epath
    saved = _leaf_shapes(ocp.PyTreeCheckpointHandler().metadata(epath.Path(path)))
  except Exception:   # pylint: disable=broad-except
    return
  want = _leaf_shapes(abstract)
  parts = {k.split("/")[0] for k in want}
  saved = {k: v for k, v in saved.items() if k.split("/")[0] in parts}
  hint = (f"its model is not this config's ({os.path.join(workdir, CONFIG_FILE)} has "
          "the settings it was trained with): use another --workdir, or that run's "
          "model settings")
  order = lambda k: (not k.startswith("params"), k)
  for key in sorted(set(want) | set(saved), key=order):
    if key not in saved:
      problem = f"the checkpoint has no {key} (this model's is {want[key]})"
    elif key not in want:
      problem = f"the checkpoint has {key} {saved[key]}, which this model does not"
    elif saved[key] != want[key]:
      problem = f"{key} is {saved[key]} in the checkpoint, {want[key]} in this model"
    else:
      continue
    raise ConfigMismatch(f"{field}={workdir!r} (step {step}): its parameters do not fit "
                         f"this model: {problem}; {hint}")


# ----------------------------------------------------------------- one run per folder


class Lock:
  """``<workdir>/lock``, held (``fcntl.flock``) by the run training in the folder for as
  long as its process lives: a second run on the folder is refused, and the OS releases
  the lock of a run that dies, even by kill -9. Only process 0 of a multi-host run takes
  it. On a shared filesystem it holds across hosts where the filesystem supports locks
  (NFSv4, Lustre, GPFS); gcsfuse and other object-store mounts do not, so there it only
  guards one host."""

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
      os.close(fd)
      raise RunFolderError(
          f"{os.path.dirname(self.path)} is in use by another run ({holder}): wait for it "
          "to finish or stop it, or give this one another --workdir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
    self.fd = fd

  def release(self) -> None:
    if self.fd is not None:
      fcntl.flock(self.fd, fcntl.LOCK_UN)
      os.close(self.fd)
      self.fd = None


def lock_run(workdir: str) -> Lock | None:
  """Takes ``workdir``'s ``Lock`` on process 0 (returned; None on the others); every
  process learns whether it got it and raises ``RunFolderError`` if not."""
  lock, err = None, None
  if jax.process_index() == 0:
    try:
      lock = Lock(workdir)
    except RunFolderError as e:
      err = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    import numpy as np
    if not multihost_utils.process_allgather(np.int32(err is None)).all() and err is None:
      err = RunFolderError(f"{workdir} is in use by another run (process 0 "
                                       "could not take its lock)")
  if err is not None:
    if lock is not None:
      lock.release()
    raise err
  return lock


@contextlib.contextmanager
def _quiet(workdir: str):
  """Yields whether no run holds ``workdir`` (a shared lock while inside, so that none
  starts meanwhile): a reader may then set broken checkpoints aside."""
  path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
  except FileNotFoundError:
    yield True
    return
  except OSError:
    yield False
    return
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except OSError:
    os.close(fd)
    yield False
    return
  try:
    yield True
  finally:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


# ------------------------------------------------------------------------ the config


def _as_json(config: Any) -> dict:
  return json.loads(config.to_json_best_effort())


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
  """``{"a.b": leaf, "input.sources[0].path": leaf}``; lists of scalars stay whole."""
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  if isinstance(tree, list) and tree and all(isinstance(x, dict) for x in tree):
    out = {f"{prefix[:-1]}.len": len(tree)}
    for i, v in enumerate(tree):
      out.update(_flat(v, f"{prefix[:-1]}[{i}]."))
    return out
  return {prefix[:-1]: tree}


def config_differences(stored: dict, config: Any) -> list[tuple[str, Any, Any]]:
  """``[(field, stored value, this config's value)]`` over the fields both hold, but
  ``RESUMABLE`` ones and those this config leaves to be resolved ("@corpus")."""
  old, new = _flat(stored), _flat(_as_json(config))
  resumable = lambda k: any(k == r or k.startswith(r + ".") or k.startswith(r + "[")
                            for r in RESUMABLE)
  return [(k, old[k], new[k]) for k in sorted(set(old) & set(new))
          if old[k] != new[k] and new[k] != "@corpus" and not resumable(k)]


def check_config(workdir: str, config: Any) -> None:
  """Refuses (``ConfigMismatch``, naming every differing field) a config that the run
  in ``workdir`` was not trained with, when the folder holds checkpoints and a
  ``config.json``; fields in ``RESUMABLE`` may differ. Call before ``@corpus`` is
  resolved and before anything is written."""
  path = os.path.join(os.path.abspath(workdir), CONFIG_FILE)
  if not os.path.exists(path) or not (os.path.isdir(folder(workdir))
                                      and os.listdir(folder(workdir))):
    return
  try:
    with open(path) as f:
      stored = json.load(f)
  except (OSError, ValueError) as e:
    raise RunFolderError(f"{path} cannot be read ({e}); restore it from a copy, or "
                         "delete it to let the checkpoints' shapes decide") from None
  diffs = config_differences(stored, config)
  if diffs:
    shown = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in diffs[:5])
    more = f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else ""
    raise ConfigMismatch(
        f"{workdir} holds a run trained with another config: {shown}{more}. Nothing was "
        f"changed there. Re-run with its settings ({path}), or use another --workdir "
        f"(--config.init_from={workdir} starts from its parameters); fields that may "
        f"change on resume: {', '.join(RESUMABLE)}")


def write_config(workdir: str, config: Any) -> None:
  """``config.json``, replaced atomically (a kill mid-write leaves the old one)."""
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = f"{path}.tmp.{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=2))
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir}: no {CONFIG_FILE}; is it a jaxclap run folder?")
  with open(path) as f:
    stored = json.load(f)
  # Run folders written before features.kind existed computed the log-mel, the only
  # front end then without the field (the fbank one has always named itself).
  if "features" in stored and "kind" not in stored["features"]:
    stored["features"]["kind"] = "logmel"
  # ... and before model.remat: their towers kept every activation.
  if "model" in stored and "remat" not in stored["model"]:
    stored["model"]["remat"] = "none"
  return ml_collections.ConfigDict(stored)


def open_run(workdir: str, step: int | None = None, device: Any = None
             ) -> tuple[ml_collections.ConfigDict, dict]:
  """``(config, variables)`` of a run folder: its config and the latest (or ``step``)
  checkpoint's ``{"params": ..., **model_state}`` (batch statistics for batch-norm
  towers) on ``device`` (default: this process's first device)."""
  from jaxclap.models import two_towers
  config = read_config(workdir)
  model = two_towers.from_config(config.model, compute_dtype(config))
  rng = jax.random.PRNGKey(0)
  shapes = jax.eval_shape(lambda: nn.meta.unbox(init_variables(model, config, rng, rng)))
  sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
  shapes = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)
  # The checkpoint's TrainState keeps batch statistics under model_state.
  abstract = {"params": shapes.pop("params"), "model_state": shapes}
  params, model_state, _ = restore_variables(workdir, abstract, step)
  return config, {"params": params, **model_state}


# ---------------------------------------------------------------- the model's variables


def compute_dtype(config: Any):
  return jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32


def dummy_batch(config: Any, batch: int = 2) -> dict:
  """A batch of the training input's shapes (zeros): what the model is initialised on."""
  c = config.input
  samples = int(round(float(c.clip_seconds) * int(c.sample_rate)))
  return {"audio": jnp.zeros((batch, samples), jnp.float32),
          "audio_len": jnp.full((batch,), samples, jnp.int32),
          "text_ids": jnp.zeros((batch, int(c.max_text_len)), jnp.int32),
          "text_mask": jnp.ones((batch, int(c.max_text_len)), jnp.int32)}


def init_variables(model: Any, config: Any, rng: jax.Array, mae_rng: jax.Array) -> dict:
  """``{"params": ..., **model_state}`` of a fresh model (boxed with logical axis
  names); a ViT with an MAE decoder gets its decoder exactly when a loss term uses it
  (``terms.uses_decoder``), for training, ``init_from`` and ``open_run`` alike."""
  from jaxclap import terms
  from jaxclap.models import two_towers
  batch = dummy_batch(config)
  spec, frames = two_towers.spectrogram(config.features, batch["audio"], batch["audio_len"])
  return model.init(rng, spec, frames, batch["text_ids"], batch["text_mask"],
                    mae_rng if terms.uses_decoder(config) else None)


# --------------------------------------------------------------- saving in the loop


def all_finite(tree) -> jax.Array:
  """True when every element of every leaf is finite."""
  return jax.tree_util.tree_reduce(lambda ok, x: ok & jnp.all(jnp.isfinite(x)), tree,
                                   jnp.array(True))


class Saver:
  """The training loop's checkpoint writes: never non-finite parameters, and a failed write
  (disk full, permissions, quota) stops the run with one line naming the folder, the
  space there and the checkpoint kept, instead of training on unsaved. Orbax writes in
  the background, so a failure surfaces at the next save, log step or the end."""

  def __init__(self, workdir: str, config: Any):
    self.workdir, self.folder = workdir, folder(workdir)
    self.mgr = manager(workdir, config)
    _quiet_orbax_tracebacks()
    self.finite = jax.jit(all_finite)
    self.in_flight, self.failed = None, False

  def save(self, state: Any, data_iter) -> None:
    step = int(state.step)
    if not bool(self.finite(state.variables())):
      raise SaveError(f"step {step}: the parameters are not finite, so no checkpoint was "
                  f"written; the last one in {self.folder} is kept")
    self._guard(lambda: save(self.mgr, state, data_iter), step)
    self.in_flight = step

  def check(self) -> None:
    self._guard(self.mgr.check_for_errors, self.in_flight)

  def wait(self) -> None:
    self._guard(self.mgr.wait_until_finished, self.in_flight)

  def _guard(self, fn, step) -> None:
    try:
      fn()
    except SaveError:
      raise
    except Exception as e:   # whatever the filesystem, Orbax or tensorstore raise
      self.failed = True
      # The failed write's other callbacks still in flight print as a failed read's do.
      _quiet_read_noise()
      raise self._failed(step, e) from e

  def _failed(self, step, err) -> SaveError:
    kept = sorted(int(n) for n in os.listdir(self.folder) if n.isdigit()) \
        if os.path.isdir(self.folder) else []
    kept = [k for k in kept if k != step] if step is not None else kept
    size = 0
    if kept:
      for root, _, files in os.walk(os.path.join(self.folder, str(kept[-1]))):
        size += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    free = shutil.disk_usage(self.folder).free if os.path.isdir(self.folder) else 0
    # The OS's reason (disk full, quota, permissions) if it gave one: tensorstore puts it
    # after the entry's and the file's names, past what _describe keeps.
    chain, e = [], err
    while e is not None:
      chain.append(str(e))
      e = e.__cause__ or e.__context__
    reason = re.search(r"(No space left on device|Disk quota exceeded|Permission denied|"
                       r"File too large|Read-only file system)", " ".join(chain))
    what = reason.group(1) if reason else _describe(err)
    logging.debug("checkpoint %s: the write failed", step, exc_info=err)
    return SaveError(
        f"could not write checkpoint {step} in {self.folder}: {what}; {free / 2**20:.0f} MiB "
        f"free there, a checkpoint takes about {size / 2**20:.0f} MiB; "
        + (f"checkpoint {kept[-1]} is kept" if kept else "no earlier checkpoint")
        + "; the run stopped: make room (or use another --workdir) and re-run to resume")

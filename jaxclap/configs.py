"""Shared building blocks of the config files in ``configs/`` (big_vision style).

Every recipe starts from ``base(args)``, the demo's settings with every field documented
below, and overrides what its paper says. ``parse(arg, name, extra)`` reads the
``--config=configs/<file>.py:key=value,flag`` argument. ``AUDIO`` / ``TEXT`` are the
demo-sized towers (and their ``runlocal`` miniatures) a config picks by name. ``load``
reads a config file from Python (tests, benchmarks, notebooks) as ``--config`` would.

Field reference (``--config.<path>=value`` overrides any of them):
  seed                 model init, data order, masking: one seed for the run
  total_steps          optimiser steps
  global_batch_size    clips per step over all processes
  compute_dtype        "float32" or "bfloat16" (params and softmax stay float32); a tower's
                       own ``model.<tower>.dtype`` overrides it for that tower
  init_from            another run's workdir: start from its latest params (CLSP stage 2)
  required             top-level fields the run refuses to start without (CLSP stage 2:
                       ("init_from",)), named in the error
  augment              None, or a dict of on-device waveform augmentations (jaxclap.augment
                       .apply), seeded, in the jitted step, padding-aware. recipe "one_of"
                       (default; AcuLa's): dict(kinds=(...), gain_db=, lowpass_hz=, highpass_hz=),
                       one transform per clip (AcuLa). recipe "recording_chain": rows (share
                       of the batch entered), then per clip, each drawn with its p_<stage>
                       (default 0): reverb (simulated room IR: rt60=(lo, hi) s, drr_db,
                       ir_seconds), noise (snr_db=(lo, hi), noise_colors of white / pink /
                       brown), eq (eq_bands peaking biquads: eq_hz, eq_gain_db, eq_q), band
                       (one of bands=((low_hz, high_hz), ...), 0 = no edge; telephone
                       (300, 3400)), codec (8-bit mu-law, mu), gain (gain_db=(lo, hi));
                       keep_level restores each clip's RMS before the gain, clip, tail_pad
  corpus.*             the embedded corpus (jaxclap.corpus.speech_corpus): data_dir, seed,
                       scale (size multiplier), num_workers (synthesis processes)
  input.sources        corpora to mix: dict(path, split, weight[, subset, redraw_every]);
                       path "@corpus" is the embedded corpus (jaxclap.input_pipeline). The
                       config argument ``data=DIR`` (``data=DIR1@0.7+DIR2@0.3``: several,
                       mixed by weight) sets it to those corpora's train splits and runs
                       every evaluator type their tasks.json can feed (``data_sources``)
  input.sample_rate    Hz of the stored waveforms
  input.clip_seconds   training window (random crop / pad)
  input.pad            "zero" or "repeat" (LAION's repeatpad) for short clips
  input.captions_per_clip  1, or 2 for CLSP's multi-positive loss
  input.caption_pool   the caption sampler (jaxclap.caption_samplers): "global", "fine",
                       "any", or "task_pairs" (CLSP stage 2's Task 1 / 2 pairs, drawn per
                       step with input.task_schedule = dict(p0, p_min, steps); None else)
  input.max_text_len   tokens per caption, special tokens included
  input.text_buckets   N: each batch's text cut to the shortest of N lengths (steps of
                       max_text_len / N, multiples of 8) holding its longest caption; the
                       step compiles once per length (1: always max_text_len). Unused
                       where config.frozen_cache computes the text tower
  input.max_caption_chars  a longer caption is a bad record (raises, naming it)
  input.truncate_chars  cut drawn captions to this many characters (CLAP: 100), or None
  input.num_threads, input.prefetch, input.worker_count   grain reading
  features.*           on-device front end (two_towers.spectrogram): kind ("logmel" |
                       "fbank"), sample_rate, target_rate (resampled on the device),
                       res_type, n_fft, win_length, hop_length, pad_mode, n_mels, fmin,
                       fmax, norm_mean, norm_std, frames_multiple
  model.embed_dim      shared space; model.head "linear" | "mlp", head_hidden,
                       head_activation, head_dropout; model.audio_head / text_head:
                       per-head overrides (kind, hidden_dim, activation, dropout_rate)
  model.logit_scale_init   log of the initial logit multiplier (clamped to [0, ln 100])
  model.logit_bias_init    SigLIP's bias (loss.terms.sigmoid only), else None
  model.remat          "none" or a rematerialisation policy for every transformer / Swin
                       tower's blocks (jaxclap.models.transformer.REMAT_POLICIES:
                       nothing_saveable, dots_saveable, dots_with_no_batch_dims_saveable):
                       activation memory for recompute; the parameters are the same, so a
                       run may resume with another. A tower's own model.<side>.remat wins
  model.scan_layers    every transformer stack (ViT, BERT family, Qwen3, Gemma3, HTS-AT's
                       Swin stages; not CNN14 or the Zipformer) as one nn.scan over its
                       layers, a period at a time where they repeat (Swin's unshifted and
                       shifted pair; Gemma3's 5 sliding + 1 global, the remainder unrolled):
                       a deep tower compiles as fast as a 1-layer one; the parameters are
                       stacked under "layers" (checkpoints and exports convert at the
                       boundary), so a run keeps the layout it started with
  model.audio / text   the towers: name, their fields, init (pretrained weights path),
                       init_kind, preset (a named size the tower registers), dtype.
                       model.audio.flip_mask_ratio (the ViT's): FLIP's share of tiles
                       its training forward drops (jaxclap.models.vit), 0: none;
                       model.audio.shared_mae_pass: with the MAE term on, one encoder
                       pass over the tiles the MAE keeps (mask_ratio) serves the
                       contrastive terms too (the demo's)
  unmasked_tuning_steps  with FLIP's masking (flip_mask_ratio > 0, or shared_mae_pass
                       with the MAE term), the last N steps train on every tile (FLIP's
                       unmasked tuning: training then meets the token count evaluation
                       and inference see); 0: none
  tokenizer            kind and path (jaxclap.tokenizers); path "@corpus" trains one
  loss.terms           {term: weight} summed into the objective (jaxclap.terms): info_nce,
                       sigmoid (SigLIP), multi_positive (CLSP stage 2), mae (masked
                       reconstruction), cka (AcuLa's 1 - CKA); weight 0 = off. SLAP's
                       lambda is info_nce's weight
  loss.mode            "gather" | "chunked": how contrastive terms cross devices
  loss.multi_positive_lambda  CLSP's lambda on a clip's first caption
  loss.norm_pix        the MAE target normalised per patch (AudioMAE)
  optim.*              jaxclap.optim.make_optimizer (its docstring says what each does): name,
                       lr, warmup_steps, decay, end_lr_ratio, decay_every, decay_rate,
                       weight_decay, b1, b2, eps, grad_clip, grad_accum, frozen, lr_mults,
                       plateau; eden's lr_batches, lr_epochs, steps_per_epoch,
                       warmup_start, staircase_epochs; scaled_adam's scalar_lr_scale,
                       param_min_rms, param_max_rms, scalar_max, size_update_period,
                       clipping_scale, clipping_update_period
  mesh                 dict(data, fsdp, tensor): one may be -1 (fill)
  sharding_rules       None: jaxclap.sharding.DEFAULT_RULES
  log_every, checkpoint_every, keep_checkpoints, log_data_indices
  max_nonfinite_steps  a step whose loss, gradients or update are not finite leaves the
                       params and optimiser state as they were (metric "nonfinite"); after
                       this many such steps in a row the run stops (0: never), its last
                       checkpoint intact
  peak_tflops          one device's peak TFLOP/s for the MFU in the log (0: jaxclap.perf's
                       table: TPU/GPU data sheets' dense bf16; a CPU's cores x clock x f32
                       FLOP/cycle of its ISA, an assumption the log states)
  frozen_cache         a text tower that optim.frozen covers wholly (and without dropout)
                       runs once per distinct caption, not in every step; its outputs are
                       kept in memory (jaxclap.frozen_cache). False: in every step
  eval.split, eval.batch_size, eval.templates   what an evaluator leaves unset: the
                       held-out split ("test"), clips per batch, prompt templates (averaged)
  evals.<name>         dict(type=..., every=N[, split, batch_size, templates, ...]): one
                       evaluator (jaxclap.evaluators), run every N steps (0: only at the
                       end) and at the end, its metrics keyed by <name>. type "zero_shot"
                       (binary antonym tasks: balanced accuracy, F1), "retrieval" (R@1/5/10,
                       mAP@10; pool="fine": the fine-grained captions), "multiclass"
                       (WA / UA), "graded" (Pearson / Spearman / Kendall against measured
                       values), "linear_probe" (logistic regression on frozen embeddings of
                       train_split, default "validation": accuracy, F1, AUROC)
"""

from __future__ import annotations

import importlib.util
import math
import os

import ml_collections
from ml_collections import config_dict

from jaxclap.evaluate import DEFAULT_TEMPLATES
from jaxclap.models import towers

# Demo-sized towers, preset -> (fields, runlocal overrides): each tower's presets live in
# its own model file (jaxclap.models.towers).
AUDIO = towers.table("audio")
TEXT = towers.table("text")

# Arguments every config file takes (after the colon) and their types.
COMMON_ARGS = {"steps": int, "batch": int, "scale": float, "runlocal": bool, "data": str}
# The repository's configs/ folder (next to the package in a checkout).
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "configs")


def load(config: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of a config file: a path ("configs/clsp.py"), a path with its
  argument ("configs/clsp.py:stage=2") or a recipe name ("clsp", looked up in the
  repository's configs/ folder)."""
  path, sep, inline = config.partition(":")
  if sep and arg is not None:
    raise ValueError(f"config {config!r}: give its argument after the colon or as arg, "
                     "not both")
  if not path.endswith(".py") and os.sep not in path:
    path = os.path.join(CONFIG_DIR, f"{path}.py")
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path} does not exist")
  spec = importlib.util.spec_from_file_location(
      "jaxclap_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(inline if sep else arg)


def parse(arg: str | None, name: str, extra: dict[str, tuple] | None = None) -> dict:
  """``"runlocal,steps=50"`` -> {"runlocal": True, "steps": 50}. Known keys:
  ``COMMON_ARGS`` (converted to their types) and ``extra`` (key -> a tuple of allowed
  values, kept as strings, or a type such as ``float``); errors name the argument."""
  extra = extra or {}
  out = {}
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    out[key.strip()] = value.strip() if sep else True
  kinds = {**COMMON_ARGS, **extra}
  unknown = set(out) - set(kinds)
  if unknown:
    raise ValueError(f"{name}: unknown argument(s) {sorted(unknown)}; use "
                     + ", ".join(list(COMMON_ARGS) + sorted(extra)))
  for key, value in out.items():
    kind = kinds[key]
    if isinstance(kind, tuple):
      if str(value) not in kind:
        raise ValueError(f"{name}: {key}={value!r}; use one of {list(kind)}")
    elif kind is bool:
      if value is not True:
        raise ValueError(f"{name}: {key} is a flag and takes no value (got {key}={value})")
    elif kind is str:
      if value is True or not value:
        raise ValueError(f"{name}: {key} takes a value ({key}=...)")
    else:
      try:
        out[key] = kind(value)
      except (TypeError, ValueError):
        raise ValueError(f"{name}: {key}={value!r} is not a number ({kind.__name__})") from None
      if key in ("steps", "batch", "scale") and out[key] <= 0:
        raise ValueError(f"{name}: {key}={value} must be > 0")
  return out


def tower(table: dict, name: str, runlocal: bool, **overrides) -> ml_collections.ConfigDict:
  """One of ``AUDIO`` / ``TEXT`` (with its runlocal miniature), fields overridden, and an
  ``init`` field (pretrained weights path, None: from scratch)."""
  fields, small = table[name]
  d = {**fields, **(small if runlocal else {}), **overrides}
  cfg = ml_collections.ConfigDict(d)
  if "init" not in cfg:
    cfg.init = ml_collections.FieldReference(None, field_type=str)
  return cfg


def preset_tower(name: str, preset: str, **fields) -> ml_collections.ConfigDict:
  """Tower ``name`` at one of its published sizes (``towers.get(name).presets``), resolved
  when the model is built so that the config names the preset."""
  if preset not in towers.get(name).presets:
    raise ValueError(f"tower {name!r}: preset={preset!r}; known: "
                     f"{sorted(towers.get(name).presets)}")
  cfg = ml_collections.ConfigDict(dict(name=name, preset=preset, **fields))
  cfg.init = ml_collections.FieldReference(None, field_type=str)
  return cfg


def minilm_text(c: ml_collections.ConfigDict, *, frozen: bool, pooling: str = "mean"):
  """The real all-MiniLM-L6-v2 weights as the text tower (the one pretrained text model
  on a fresh machine): the demo's, and every recipe's runlocal one (a toy text tower
  from scratch has nearly identical embeddings for every caption at init and learns
  nothing in a CPU-minute). ``frozen``: the whole tower (a frozen teacher / embedder,
  as SLAP and AcuLa's, and the demo's); else its embeddings and lower 4 of 6 layers stay
  as pretrained (never differentiated, no optimiser state: half the step time of
  training them all) and the rest moves at 0.1x lr."""
  c.model.text = tower(TEXT, "minilm", True, pooling=pooling)
  c.tokenizer = ml_collections.ConfigDict(dict(kind="minilm"))
  c.input.max_text_len = 56
  if frozen:
    c.optim.frozen = ("text/.*",)
    c.optim.lr_mults = ()
  else:
    c.optim.frozen = ("text/(word|position|token_type)_embeddings/.*",
                      "text/embeddings_norm/.*", "text/encoder/layer_[0-3]/.*")
    c.optim.lr_mults = (("text/.*", 0.1),)


def set_terms(c: ml_collections.ConfigDict, **weights: float) -> None:
  """The loss terms a recipe uses, with their weights; every other term off (weight 0,
  still listed so that a command line can turn it on)."""
  c.loss.terms = ml_collections.ConfigDict(
      {**{name: 0.0 for name in c.loss.terms}, **{k: float(v) for k, v in weights.items()}})


def data_sources(arg: str, split: str = "train") -> list[dict]:
  """The ``data=`` config argument -> ``input.sources``: corpora joined by "+", each a
  prepared dataset folder (``python -m jaxclap.prepare`` or a ``data/`` builder's
  ``<out>/<name>/1.0.0``, or a folder holding one) with an optional ``@weight`` (default
  1): ``data=~/corpora/mine/1.0.0`` or ``data=~/corpora/a@0.7+~/corpora/b@0.3``. "+" and
  "@" because "," separates config arguments and ":" starts them (and occurs in gs://)."""
  sources = []
  for i, item in enumerate(arg.split("+")):
    path, sep, weight = item.strip().rpartition("@") if "@" in item else (item.strip(), "", "")
    if not path:
      raise ValueError(f"data={arg!r}: corpus {i + 1} has no path (use data=DIR or "
                       "data=DIR1@0.7+DIR2@0.3)")
    try:
      w = float(weight) if sep else 1.0
    except ValueError:
      raise ValueError(f"data={arg!r}: weight {weight!r} of {path} is not a number") from None
    if not (w > 0 and math.isfinite(w)):
      raise ValueError(f"data={arg!r}: weight {weight!r} of {path} must be > 0")
    if "://" not in path:   # the shell leaves ~ inside --config=...:data=~/x unexpanded
      path = os.path.abspath(os.path.expanduser(path))
    sources.append(dict(path=path, split=split, weight=w))
  return sources


def base(args: dict) -> ml_collections.ConfigDict:
  """The demo's settings (a small AudioMAE-shaped ViT against MiniLM on the embedded
  corpus); recipes override them. ``args``: what ``parse`` returned."""
  runlocal = bool(args.get("runlocal"))
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = int(args.get("steps", 12 if runlocal else 1900))
  c.global_batch_size = int(args.get("batch", 8 if runlocal else 48))
  c.compute_dtype = "float32"
  c.init_from = ml_collections.FieldReference(None, field_type=str)
  c.required = ()
  c.augment = None

  c.corpus = ml_collections.ConfigDict()
  # None: $JAXCLAP_DATA_DIR or ~/.cache/jaxclap/datasets
  c.corpus.data_dir = ml_collections.FieldReference(None, field_type=str)
  c.corpus.seed = 0
  c.corpus.scale = float(args.get("scale", 0.05 if runlocal else 1.0))
  c.corpus.num_workers = 2

  c.input = ml_collections.ConfigDict()
  c.input.sources = (data_sources(args["data"]) if args.get("data") else
                     [dict(path="@corpus", split="train", weight=1.0)])
  c.input.sample_rate = 16000
  c.input.clip_seconds = 3.0
  c.input.pad = "zero"
  c.input.captions_per_clip = 1
  c.input.caption_pool = "global"
  c.input.task_schedule = None
  c.input.max_text_len = 56       # the corpus's longest caption has 51 WordPiece tokens
  # Cut to a few lengths, not always max_text_len (the corpus's mean caption is ~25
  # tokens): a step compiles once per length, too many compiles for the tests' runs.
  c.input.text_buckets = 1 if runlocal else 4
  c.input.max_caption_chars = 1000
  c.input.truncate_chars = None
  c.input.num_threads = 2
  c.input.prefetch = 4
  c.input.worker_count = 0

  # 16 kHz, 25 ms window, 10 ms hop as SLAP/AudioMAE, 64 mel bins to keep the demo light.
  c.features = ml_collections.ConfigDict()
  c.features.kind = "logmel"
  c.features.sample_rate = 16000
  c.features.target_rate = 16000
  c.features.res_type = "polyphase"
  c.features.n_fft = 512
  c.features.win_length = 400
  c.features.hop_length = 160
  c.features.pad_mode = "constant"
  c.features.n_mels = 64
  c.features.fmin = 20.0
  c.features.fmax = 8000.0
  c.features.norm_mean = -48.0    # measured on the embedded corpus's train split
  c.features.norm_std = 28.0
  c.features.frames_multiple = 16  # the ViT patch

  c.model = ml_collections.ConfigDict()
  c.model.embed_dim = 32 if runlocal else 256
  c.model.head = "mlp"
  c.model.head_hidden = 64 if runlocal else 512
  c.model.head_activation = "gelu"
  c.model.head_dropout = 0.0
  c.model.audio_head = None
  c.model.text_head = None
  c.model.logit_scale_init = math.log(1 / 0.07)  # CLIP/SLAP temperature 0.07
  c.model.logit_bias_init = ml_collections.FieldReference(None, field_type=float)
  c.model.remat = "none"
  c.model.scan_layers = False
  c.model.audio = tower(AUDIO, "vit", runlocal)
  c.model.text = tower(TEXT, "minilm", runlocal)
  c.tokenizer = ml_collections.ConfigDict(dict(kind="minilm"))

  c.loss = ml_collections.ConfigDict()
  # Every term a recipe may use is listed, so that --config.loss.terms.<name>=w can turn
  # any of them on from the command line; weight 0 = off.
  c.loss.terms = ml_collections.ConfigDict(dict(info_nce=1.0, sigmoid=0.0, multi_positive=0.0,
                                                mae=0.1, cka=0.0))
  c.loss.multi_positive_lambda = 0.5
  c.loss.norm_pix = True
  c.loss.mode = "gather"

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"
  c.optim.lr = 5e-4
  c.optim.warmup_steps = 2 if runlocal else 100
  c.optim.decay = "cosine"
  c.optim.weight_decay = 1e-4
  c.optim.grad_clip = 1.0
  c.optim.grad_accum = 1
  c.optim.lr_mults = ()
  c.optim.frozen = ()
  c.optim.end_lr_ratio = 0.0
  c.optim.decay_every = config_dict.placeholder(int)      # decay="exponential"
  c.optim.decay_rate = config_dict.placeholder(float)
  c.optim.b1 = 0.9
  c.optim.b2 = config_dict.placeholder(float)   # None: 0.999 (adam/adamw), 0.98 (scaled_adam)
  c.optim.eps = 1e-8
  c.optim.plateau = None
  # decay="eden" (jaxclap.optim.eden_schedule); steps_per_epoch is the recipe's.
  c.optim.lr_batches = 7500.0
  c.optim.lr_epochs = 3.5
  c.optim.steps_per_epoch = config_dict.placeholder(int)
  c.optim.warmup_start = 0.5
  c.optim.staircase_epochs = False
  # name="scaled_adam" (jaxclap.optim.scaled_adam), icefall's values.
  c.optim.scalar_lr_scale = 0.1
  c.optim.param_min_rms = 1e-5
  c.optim.param_max_rms = 3.0
  c.optim.scalar_max = 10.0
  c.optim.size_update_period = 4
  c.optim.clipping_scale = config_dict.placeholder(float)
  c.optim.clipping_update_period = 100

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding_rules = None

  c.log_every = 2 if runlocal else 10
  c.checkpoint_every = 4 if runlocal else 100
  c.keep_checkpoints = 2
  c.log_data_indices = False
  c.max_nonfinite_steps = 10
  c.peak_tflops = 0.0
  c.frozen_cache = True
  c.unmasked_tuning_steps = 0

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"
  c.eval.batch_size = 16 if runlocal else 64
  c.eval.templates = list(DEFAULT_TEMPLATES)
  c.evals = ml_collections.ConfigDict()
  c.evals.zero_shot = dict(type="zero_shot", every=0)
  c.evals.retrieval = dict(type="retrieval", every=0)
  if args.get("data"):
    # Your own corpus: whatever its tasks.json declares is evaluated (an evaluator whose
    # kind of task it lacks says so and is left out), and retrieval always.
    c.evals.multiclass = dict(type="multiclass", every=0)
    c.evals.graded = dict(type="graded", every=0)
  return c

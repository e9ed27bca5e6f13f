"""jaxclap's train step against transformers' ClapModel (HTS-AT tiny + RoBERTa-base).

  python benchmarks/vs_transformers.py [--rounds 5] [--batch 8] [--steps 1] [--warmup 1]
                                       [--text_len 32] [--scan_layers] [--quick]

  --rounds N     alternating rounds, jax then torch (the order flips every round) (default 5)
  --batch N      global batch size, the same on both sides (default 8)
  --steps N      timed steps per side per round (default 1)
  --warmup N     untimed steps per side before the rounds, after the first (compiling)
                 one (default 1)
  --text_len L   tokens per caption on both sides (default 32)
  --scan_layers  jaxclap's towers with ``model.scan_layers=True`` (HTS-AT's stages as
                 scanned block pairs, RoBERTa's 12 layers as one scanned layer): the
                 same model and numbers, compiled in a minute instead of half an hour
                 on 2 cores; the step pays the scan's slicing and stacking (a few %)
  --quick        a smoke test in seconds: the runlocal miniatures of both towers
                 (``configs/demo.py:audio=htsat,text=roberta,runlocal``, 4 s clips), batch 2,
                 8 tokens, 1 round, no warm-up; its figures mean nothing
  --omp_wait_policy P   as in benchmarks/train_step.py (default PASSIVE)
  --trace DIR    after the rounds, trace 2 more jaxclap steps with jax.profiler into DIR
                 (a perfetto .trace.json.gz; run with
                 XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true for one event per HLO op)

Both sides train the same model, from random weights, in float32, in ONE process:

  jax     ``jaxclap.train.Trainer(config, mesh).step`` (donated state, block_until_ready
          on the metrics; benchmarks/train_step.py's ``JaxSide``) for
          ``configs/demo.py:audio=htsat,text=roberta`` with the text tower grown to
          RoBERTa-base (``ROBERTA_BASE``): HTS-AT tiny from 10 s, 16 kHz waveforms, the
          log-mel (1001 x 64 frames) computed ON THE DEVICE inside the step; symmetric
          InfoNCE; grad clipping at the config's norm and AdamW (decay on >= 2-D
          parameters, warm-up + cosine).
  torch   ``transformers.ClapModel`` built from the very same config by
          ``jaxclap.export.clap.clap_config`` (the exporter's mapping, so the towers and
          heads match parameter for parameter: both counts are printed), in train mode, its
          ``return_loss=True`` loss; ``clip_grad_norm_`` and ``torch.optim.AdamW`` with the
          same hyper-parameters and schedule. Its input features come READY-MADE: the
          ``ClapFeatureExtractor`` (``jaxclap.export.clap.feature_extractor_kwargs``, the
          same log-mel) runs once on the host before timing, so torch's step does less
          work than jaxclap's (the extractor's time per batch is printed for scale).

Batches: benchmarks/train_step.py's ``make_batch`` (random waveforms, captions of 8..L
tokens), its ids recast as RoBERTa's (<s> = 0, </s> = 2, <pad> = 1) and laid out as the
input pipeline gives them: text_ids / text_mask [b, K = 1, L], caption_pool [b, K].

Figures: the median step time over all timed steps (the best too), samples/s, and the
speedup = torch median / jax median (the issue's target is >= 1.3x), next to the ISA
(benchmarks/isa.py: AVX-512 / AVX2, and any XLA_FLAGS / ATEN_CPU_CAPABILITY restriction
in effect; see its docstring for what those do not restrict), the torch / jax versions,
the thread settings and the 1-minute load average (which counts this benchmark's own
threads: ~2 on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import isa  # noqa: E402  (benchmarks/isa.py; no heavy imports)

# transformers' ClapTextConfig defaults = roberta-base, which LAION-CLAP's text tower is.
ROBERTA_BASE = dict(vocab_size=50265, hidden_size=768, depth=12, num_heads=12, mlp_dim=3072,
                    max_len=514)
BOS, PAD, EOS = 0, 1, 2   # RoBERTa's special ids


def make_config(quick: bool, batch: int, text_len: int, scan_layers: bool = False):
  """configs/demo.py:audio=htsat,text=roberta with RoBERTa-base's text tower (or, with
  ``quick``, the runlocal miniatures), ``batch`` clips and ``text_len`` tokens."""
  from jaxclap import configs
  config = configs.load("demo", "audio=htsat,text=roberta" + (",runlocal" if quick else ""))
  if not quick:
    config.model.text.update(ROBERTA_BASE)
  config.global_batch_size = batch
  config.input.max_text_len = text_len
  config.model.scan_layers = scan_layers
  return config


def make_host_batch(config, batch: int):
  """train_step.make_batch's random batch, as the input pipeline lays it out, with
  RoBERTa's special ids."""
  import numpy as np
  from train_step import make_batch
  host = make_batch(config, batch)
  mask = host["text_mask"][:, 0]
  lens = mask.sum(1)
  ids = np.where(mask > 0, host["text_ids"][:, 0], PAD).astype(np.int32)
  ids[:, 0] = BOS
  ids[np.arange(batch), lens - 1] = EOS
  host.update(text_ids=ids[:, None, :], text_mask=mask[:, None, :],
              caption_pool=np.zeros((batch, 1), np.int32))
  return host


class TransformersSide:
  """transformers' ClapModel train step on precomputed ClapFeatureExtractor features."""

  def __init__(self, config, host):
    import numpy as np
    import torch
    import transformers
    from jaxclap.export import clap as clap_export
    self.torch = torch
    torch.manual_seed(0)
    cfg = clap_export.clap_config(config, logit_scale=float(config.model.logit_scale_init))
    self.model = transformers.ClapModel(cfg)
    self.model.train()
    self.dropout = (cfg.text_config.hidden_dropout_prob,
                    cfg.text_config.attention_probs_dropout_prob,
                    cfg.audio_config.hidden_dropout_prob, cfg.audio_config.drop_path_rate)
    extractor = transformers.ClapFeatureExtractor(
        **clap_export.feature_extractor_kwargs(config))
    t = time.perf_counter()
    feats = extractor(list(host["audio"]), sampling_rate=int(config.input.sample_rate),
                      return_tensors="pt")
    self.extract_s = time.perf_counter() - t
    self.inputs = dict(
        input_ids=torch.from_numpy(host["text_ids"][:, 0].astype(np.int64)),
        attention_mask=torch.from_numpy(host["text_mask"][:, 0].astype(np.int64)),
        input_features=feats["input_features"], is_longer=feats["is_longer"],
        return_loss=True)
    self.params = [p for p in self.model.parameters() if p.requires_grad]
    oc = config.optim
    self.clip = None if oc.grad_clip is None else float(oc.grad_clip)
    decay = [p for p in self.params if p.ndim > 1]
    rest = [p for p in self.params if p.ndim <= 1]
    self.opt = torch.optim.AdamW(
        [dict(params=decay, weight_decay=float(oc.weight_decay)),
         dict(params=rest, weight_decay=0.0)],
        lr=float(oc.lr), betas=(float(oc.b1), 0.999 if oc.b2 is None else float(oc.b2)),
        eps=float(oc.eps), foreach=True)
    warm, total = int(oc.warmup_steps), int(config.total_steps)
    import math

    def sched(step):
      if step < warm:
        return step / warm
      return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, sched)

  def num_params(self) -> int:
    return sum(p.numel() for p in self.params)

  def param_counts(self) -> dict[str, int]:
    out = {}
    for name, p in self.model.named_parameters():
      key = name.split(".")[0]
      out[key] = out.get(key, 0) + p.numel()
    return out

  def step(self):
    self.opt.zero_grad(set_to_none=True)
    loss = self.model(**self.inputs).loss
    loss.backward()
    if self.clip is not None:
      self.torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
    self.opt.step()
    self.sched.step()
    return float(loss.detach())


def main(argv=None):
  doc = __doc__.split("\n\n")
  parser = argparse.ArgumentParser(description=doc[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog="\n\n".join(doc[1:]))
  parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 5)")
  parser.add_argument("--batch", type=int, default=None, help="global batch size (default 8)")
  parser.add_argument("--steps", type=int, default=1,
                      help="timed steps per side per round (default 1)")
  parser.add_argument("--warmup", type=int, default=None,
                      help="untimed steps per side after the first one (default 1)")
  parser.add_argument("--text_len", type=int, default=None,
                      help="tokens per caption (default 32)")
  parser.add_argument("--scan_layers", action="store_true",
                      help="jaxclap's towers scanned over their layers (compiles in a "
                           "minute; see the docstring)")
  parser.add_argument("--quick", action="store_true",
                      help="smoke test: runlocal towers, batch 2, 8 tokens, 1 round")
  parser.add_argument("--omp_wait_policy", default="PASSIVE",
                      help="OMP_WAIT_POLICY for torch's OpenMP pool unless already set "
                           "(default PASSIVE; 'unset' leaves it)")
  parser.add_argument("--trace", default=None,
                      help="folder for a jax.profiler trace of 2 jaxclap steps after the "
                           "rounds (see the docstring)")
  args = parser.parse_args(argv)
  small = dict(rounds=1, batch=2, warmup=0, text_len=8)
  full = dict(rounds=5, batch=8, warmup=1, text_len=32)
  for k, v in (small if args.quick else full).items():
    if getattr(args, k) is None:
      setattr(args, k, v)
  for k in ("rounds", "batch", "steps", "text_len"):
    if getattr(args, k) < 1:
      parser.error(f"--{k} must be >= 1, got {getattr(args, k)}")
  if args.warmup < 0:
    parser.error(f"--warmup must be >= 0, got {args.warmup}")
  if args.text_len < 3:
    parser.error(f"--text_len must be >= 3 (<s>, a token, </s>), got {args.text_len}")
  if args.omp_wait_policy != "unset":  # read when libgomp loads: before importing torch
    os.environ.setdefault("OMP_WAIT_POLICY", args.omp_wait_policy)

  import jax
  import torch
  import transformers

  from train_step import JaxSide, median_time

  threads = os.cpu_count()
  torch.set_num_threads(threads)
  config = make_config(args.quick, args.batch, args.text_len, args.scan_layers)
  host = make_host_batch(config, args.batch)
  dev = jax.devices()[0]
  print(isa.describe())
  print(f"JAX {jax.__version__} ({dev.platform}, {jax.device_count()} device(s)), "
        f"torch {torch.__version__}, transformers {transformers.__version__}; "
        f"host CPUs {threads}; torch threads {torch.get_num_threads()} "
        f"(interop {torch.get_num_interop_threads()}), "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; XLA's CPU pool: every "
        f"core; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  samples = host["audio"].shape[1]
  print(f"batch {args.batch} x {samples / float(config.input.sample_rate):g} s at "
        f"{config.input.sample_rate} Hz, text {args.text_len} tokens ([b, 1, L]); fp32; "
        f"{args.rounds} rounds x {args.steps} step(s), {args.warmup} warm-up; jaxclap "
        f"scan_layers={args.scan_layers}; "
        f"load average {os.getloadavg()[0]:.2f}" + ("  [--quick: a smoke test]" if args.quick
                                                     else ""), flush=True)

  t = time.perf_counter()
  js = JaxSide(config, host)
  js.step()
  print(f"jax: compile + first step {time.perf_counter() - t:.1f} s; params "
        f"{js.num_params():,} = " + " + ".join(
            f"{k} {v:,}" for k, v in js.trainer.param_counts().items()), flush=True)
  ts = TransformersSide(config, host)
  shape = tuple(ts.inputs["input_features"].shape)
  print(f"torch ClapModel: params {ts.num_params():,} = " + " + ".join(
      f"{k} {v:,}" for k, v in ts.param_counts().items())
        + f"  (jax - torch {js.num_params() - ts.num_params():+d}: ClapModel's second logit "
        f"scale); dropout "
        f"(text hidden, text attn, audio hidden, audio drop-path) {ts.dropout}", flush=True)
  print(f"inputs: jax  waveforms {tuple(host['audio'].shape)}, log-mel computed on the device "
        f"inside the timed step\n        torch input_features {shape} from "
        f"ClapFeatureExtractor, precomputed on the host ({ts.extract_s:.2f} s for the batch, "
        f"NOT in torch's timed step)", flush=True)
  # ClapModel keeps two logit scales (audio->text, text->audio), jaxclap one.
  if js.num_params() != ts.num_params() - 1:
    print("WARNING: the parameter counts differ by more than ClapModel's second logit "
          "scale: the two sides do not train the same model")

  sides = {"jaxclap": js, "transformers": ts}
  t = time.perf_counter()
  ts.step()
  print(f"torch: first step {time.perf_counter() - t:.1f} s", flush=True)
  for side in sides.values():
    for _ in range(args.warmup):
      side.step()
  times = {k: [] for k in sides}
  for r in range(args.rounds):
    order = list(sides) if r % 2 == 0 else list(sides)[::-1]
    load = os.getloadavg()[0]
    for name in order:
      times[name] += median_time(sides[name].step, args.steps)
    print(f"round {r + 1} (load {load:.2f}): " + "  ".join(
        f"{k} " + "/".join(f"{x:.2f}" for x in times[k][-args.steps:]) + " s" for k in order),
          flush=True)

  med = {k: statistics.median(v) for k, v in times.items()}
  best = {k: min(v) for k, v in times.items()}
  label = isa.effective_isa()
  print()
  for k in sides:
    print(f"{k:<13} {med[k]:7.3f} s/step median (best {best[k]:.3f}), "
          f"{args.batch / med[k]:6.2f} samples/s  [{label}; load {os.getloadavg()[0]:.2f}]")
  print(f"speedup jaxclap / transformers: {med['transformers'] / med['jaxclap']:.2f}x median, "
        f"{best['transformers'] / best['jaxclap']:.2f}x best  (target >= 1.3x; jaxclap's step "
        f"includes its log-mel, transformers' does not)  [{label}]")

  if args.trace:
    with jax.profiler.trace(args.trace, create_perfetto_trace=True):
      for _ in range(2):
        js.step()
    print(f"trace of 2 jaxclap steps in {args.trace}")


if __name__ == "__main__":
  main()

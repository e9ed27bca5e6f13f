"""Three of the papers' ablations, replicated small on the embedded corpus.

  python benchmarks/ablations.py [--steps 300] [--batch 16] [--scale 0.25] [--only slap,clsp,clap]

Each row is a recipe's ``:runlocal`` variant (small towers against the real
all-MiniLM-L6-v2 text model) trained for --steps on a --scale corpus, then evaluated on
the test split (never-seen voices and sentences):

  SLAP   lambda = 1 vs lambda = 0 (SLAP-MAE, self-supervised only). The paper: zero-shot
         needs the contrastive term; SLAP-MAE is only usable through a trained probe.
         Reported: mean zero-shot balanced accuracy over the binary tasks, mean
         linear-probe balanced accuracy over them, text->audio R@1.
  CLSP   stage 1 vs stage 1 + stage 2 (stage 2 continues from stage 1's weights for
         --stage2_steps more steps with the multi-positive loss and the task scheduler).
         The paper: stage 2 adds global-caption retrieval while keeping fine-grained.
         Reported: text->audio mAP@10 against global and against fine-grained captions.
  CLAP   both encoders trained vs the audio or the text encoder frozen (Table 2 of the
         CLAP paper: training both is best). Reported: mean zero-shot balanced accuracy,
         text->audio R@1.

Runs live in --workdir (default /tmp/jaxclap_ablations); a finished run is re-evaluated,
not retrained. The table is markdown, for the README; results.json beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)


def run(name: str, arg: str, workdir: str, args, evals, **overrides) -> dict:
  from jaxclap import configs, train
  base = f"runlocal,steps={args.steps},batch={args.batch},scale={args.scale}"
  c = configs.load(name, base + ("," + arg if arg else ""))
  c.corpus.data_dir = args.data_dir
  c.evals = {k: c.evals[k] for k in evals}   # the recipe's own evaluators of these names
  c.log_every = 50
  c.checkpoint_every = 10**9   # the end only
  for key, value in overrides.items():
    c[key] = value
  t = time.time()
  _, results = train.train_and_evaluate(c, workdir)
  print(f"[{name}:{arg}] {time.time() - t:.0f} s", flush=True)
  return results


def _mean(d: dict, key: str | None = None) -> float:
  vals = [v[key] if key else v for v in d.values() if v is not None]
  return sum(vals) / len(vals)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--steps", type=int, default=300, help="training steps per run (300)")
  p.add_argument("--batch", type=int, default=16, help="global batch size (16)")
  p.add_argument("--scale", type=float, default=0.25, help="corpus size multiplier (0.25)")
  p.add_argument("--stage2_steps", type=int, default=None,
                 help="CLSP stage 2 steps (default: --steps)")
  p.add_argument("--only", default="slap,clsp,clap", help="which ablations (all three)")
  p.add_argument("--workdir", default="/tmp/jaxclap_ablations")
  p.add_argument("--data_dir", default=None, help="corpus cache (default: jaxclap's)")
  args = p.parse_args(argv)
  only = set(args.only.split(","))
  unknown = only - {"slap", "clsp", "clap"}
  if unknown:
    p.error(f"--only: unknown {sorted(unknown)}; use slap, clsp, clap")
  w = lambda tag: os.path.join(args.workdir, tag)
  rows, out = [], {}

  if "slap" in only:
    for lam in (1, 0):
      r = run("slap", f"lam={lam}", w(f"slap_lam{lam}"), args,
              ("zero_shot", "retrieval", "linear_probe"))
      binary = {k: v for k, v in r["linear_probe"].items() if k in r["zero_shot"]}
      out[f"slap_lam{lam}"] = r
      rows.append((f"SLAP lambda = {lam}" + (" (SLAP-MAE)" if lam == 0 else ""),
                   f"zero-shot {r['zero_shot_mean']:.1%}, linear probe "
                   f"{_mean(binary, 'balanced_accuracy'):.1%}, "
                   f"t->a R@1 {r['retrieval']['text_to_audio/R@1']:.1%}"))

  if "clsp" in only:
    evals = ("retrieval", "retrieval_fine")
    s1 = run("clsp", "stage=1", w("clsp_stage1"), args, evals)
    s2 = run("clsp", f"stage=2,steps={args.stage2_steps or args.steps}", w("clsp_stage2"), args,
             evals, init_from=w("clsp_stage1"))
    for tag, r in (("CLSP stage 1", s1), ("CLSP stage 1 + 2", s2)):
      out[tag] = r
      rows.append((tag, f"t->a mAP@10 global {r['retrieval']['text_to_audio/mAP@10']:.1%}, "
                        f"fine-grained {r['retrieval_fine']['text_to_audio/mAP@10']:.1%}"))

  if "clap" in only:
    for frozen in ("none", "audio", "text"):
      r = run("clap", f"frozen={frozen}", w(f"clap_frozen_{frozen}"), args,
              ("zero_shot", "retrieval"))
      tag = {"none": "CLAP both trained", "audio": "CLAP audio frozen",
             "text": "CLAP text frozen"}[frozen]
      out[tag] = r
      rows.append((tag, f"zero-shot {r['zero_shot_mean']:.1%}, "
                        f"t->a R@1 {r['retrieval']['text_to_audio/R@1']:.1%}"))

  os.makedirs(args.workdir, exist_ok=True)
  with open(os.path.join(args.workdir, "results.json"), "w") as f:
    json.dump(out, f, indent=2, default=float)
  print(f"\n{args.steps} steps, batch {args.batch}, corpus scale {args.scale}; "
        "test split (never-seen voices and sentences)\n")
  print("| run | result |\n|---|---|")
  for tag, text in rows:
    print(f"| {tag} | {text} |")


if __name__ == "__main__":
  main()

r"""SLAP ("SLAP: Learning Speaker and Health-Related Representations from Natural
Language Supervision", Ando et al., Callyope): an
AudioMAE ViT-B trained with lambda * InfoNCE + MAE against a sentence-embedding text
model, on corpora of very different sizes re-sampled every 2,000 steps.

  python -m jaxclap.main --config=configs/slap.py --workdir=DIR     # the paper's sizes
  python -m jaxclap.main --config=configs/slap.py:runlocal          # CPU, a few minutes
  python -m jaxclap.main --config=configs/slap.py:runlocal,lam=0    # SLAP-MAE ablation

Arguments: steps=N, batch=N, scale=X, runlocal, lam=X (the contrastive weight lambda;
1 in the paper, 0 = SLAP-MAE, self-supervised only).

Pretrained towers: --config.model.audio.init=<AudioSet AudioMAE checkpoint> (imported
with the released position layout), --config.model.text.init=<Qwen3-Embedding-8B folder>
and --config.tokenizer.path=<its tokenizer.json>. Corpora: --config.input.sources, each
large one with subset=N, redraw_every=2000 (jaxclap/configs.py documents every field).
"""

from jaxclap import configs
from jaxclap.models import audiomae

NAME = "configs/slap.py"


def get_config(arg: str | None = None):
  args = configs.parse(arg, NAME, {"lam": float})
  runlocal = bool(args.get("runlocal"))
  c = configs.base(args)
  # Audio: the ViT-B masked autoencoder of AudioMAE, AudioSet-pretrained; 128 mel
  # filterbanks, 25 ms window, 10 ms hop at 16 kHz (AudioMAE's Kaldi fbank); 10 s windows
  # (the paper's sliding windows for long audio). No augmentation.
  if runlocal:
    c.model.audio = configs.tower(configs.AUDIO, "vit", True)
  else:
    c.model.audio = configs.tower(configs.AUDIO, "vit", False, width=768, depth=12,
                                  num_heads=12, mlp_dim=3072, mask_ratio=0.8,
                                  mae_width=512, mae_depth=8, mae_heads=16,
                                  pos_layout="audiomae")
    c.features = audiomae.features_config()
    c.input.clip_seconds = 10.24
  # Text: the paper embeds descriptions with Qwen3-Embedding-8B. It says nothing of
  # training it; an 8B model beside a ViT-B on 4 x A100 40 GB is used as a frozen
  # embedder (no gradient, bfloat16), and its projection head learns.
  if runlocal:  # all-MiniLM-L6-v2, a real sentence embedder, frozen likewise
    configs.minilm_text(c, frozen=True)
  else:
    c.model.text = configs.preset_tower("qwen3", "qwen3-embedding-8b", dtype="bfloat16")
    c.tokenizer = dict(kind="qwen3", path="Qwen3-Embedding-8B")  # set to its folder
    c.optim.frozen = ("text/.*",)
  # Projections: "learnable projection heads", unspecified: CLAP's (the ancestor it
  # follows) linear maps to 1024.
  c.model.head = "linear"
  c.model.embed_dim = 32 if runlocal else 1024
  # Loss: lambda * L_clip + L_mae, lambda = 1; tau learnable, initialised 0.07.
  configs.set_terms(c, info_nce=float(args.get("lam", 1.0)), mae=1.0)
  c.loss.norm_pix = True            # AudioMAE's target
  # Captions: alternative descriptions per speaker, one sampled per step.
  c.input.captions_per_clip = 1
  c.input.caption_pool = "global"
  # Data: large corpora sub-sampled afresh every 2,000 steps. On the embedded corpus
  # (one source) runlocal shows the mechanism: a 120-clip subset redrawn every 10 steps.
  if runlocal and not args.get("data"):   # data=DIR: the user's corpora, as given
    c.input.sources = [dict(path="@corpus", split="train", weight=1.0, subset=120,
                            redraw_every=10)]
  # Optimiser: Adam (0.9, 0.999), 50k steps, 2,500 warm-up steps to lr 1e-4, then x0.99
  # every 2,000 steps.
  c.optim.name = "adam"
  c.optim.b1, c.optim.b2 = 0.9, 0.999
  c.optim.lr = 1e-3 if runlocal else 1e-4
  c.optim.warmup_steps = 2 if runlocal else 2500
  c.optim.decay = "exponential"
  c.optim.decay_rate = 0.99
  c.optim.decay_every = 10 if runlocal else 2000
  c.optim.grad_clip = None
  c.total_steps = int(args.get("steps", 30 if runlocal else 50_000))
  # 4 x A100 40 GB; the batch is not stated: 32 clips per GPU (AudioMAE's fine-tuning).
  c.global_batch_size = int(args.get("batch", 8 if runlocal else 128))
  # Evaluation: binary zero-shot with antonym prompts and linear probing (logistic
  # regression); metric F1.
  c.evals = dict(zero_shot=dict(type="zero_shot", every=0),
                 retrieval=dict(type="retrieval", every=0),
                 linear_probe=dict(type="linear_probe", every=0))
  return c

r"""CLSP ("Towards Fine-Grained and Multi-Granular Contrastive Language-Speech
Pre-training", with its FCaps corpus): contrastive language-speech pretraining in two
stages.
Stage 1: symmetric InfoNCE, one fine-grained caption per clip. Stage 2, from stage 1's
weights: multi-positive InfoNCE over two captions per clip (lambda = 0.5 on the first),
each step Task 1 (global + fine-grained) with probability p_t, else Task 2 (two
fine-grained), p_t falling linearly 0.95 -> 0.50 over 10,000 steps.

  python -m jaxclap.main --config=configs/clsp.py:stage=1 --workdir=S1
  python -m jaxclap.main --config=configs/clsp.py:stage=2 --workdir=S2 --config.init_from=S1
  python -m jaxclap.main --config=configs/clsp.py:runlocal,stage=1 --workdir=/tmp/s1

Arguments: steps=N, batch=N, scale=X, runlocal, stage=1|2 (default 1), p_min=X (stage 2;
p_min=0.95 is the static scheduler).

The audio tower is the paper's: SPEAR-XLarge, a Zipformer (jaxclap.models.zipformer's
"spear-xlarge" preset: 597.0M parameters, the paper's 599M), over SPEAR's 128-bin Kaldi
fbank and mean-pooled over time, as the paper pools it. Import the released SPEAR
weights (an icefall checkpoint, encoder_embed.* / encoder.*) with
--config.model.audio.init=PATH. In all the full-size model has 722.6M parameters
(Zipformer 597.0M, RoBERTa-base 124.1M, the two MLP heads 1.6M; the paper: 724M, of
which 599M SPEAR-XLarge and 125M RoBERTa-base), tests/test_recipes.py counting them from
shapes. runlocal still stands the demo's ViT miniature in for the audio tower: the
Zipformer's runlocal miniature (model.audio.name=zipformer, its "zipformer" preset)
computes its forward and backward at batch 8 in ~1.3 s on 2 CPU cores, but XLA:CPU took
over 5 minutes to compile the whole training step (load 7-13), too long for a
CPU-minute run yet.
"""

from jaxclap import configs
from jaxclap.models import zipformer

NAME = "configs/clsp.py"


def get_config(arg: str | None = None):
  args = configs.parse(arg, NAME, {"stage": ("1", "2"), "p_min": float})
  runlocal, stage = bool(args.get("runlocal")), int(args.get("stage", 1))
  c = configs.base(args)
  # Audio: SPEAR-XLarge (the final layer, mean-pooled over time), on SPEAR's fbank
  # (jaxclap.models.zipformer.features_config). runlocal: the demo's ViT miniature on the
  # base log-mel (see the docstring).
  if runlocal:
    c.model.audio = configs.tower(configs.AUDIO, "vit", True)
  else:
    c.model.audio = configs.preset_tower("zipformer", "spear-xlarge")
    c.features = zipformer.features_config()
    c.input.clip_seconds = 10.0   # the stand-in for the paper's duration batching, below
  # Text: RoBERTa-base, final-layer [CLS], up to 512 tokens.
  # runlocal: all-MiniLM-L6-v2's [CLS] (jaxclap.configs.minilm_text).
  if runlocal:
    configs.minilm_text(c, frozen=False, pooling="cls")
  else:
    c.model.text = configs.tower(configs.TEXT, "roberta", False, pooling="cls",
                                 vocab_size=50265, hidden_size=768, depth=12,
                                 num_heads=12, mlp_dim=3072)
    c.tokenizer = dict(kind="roberta", path="roberta-base")  # set to its folder
    c.input.max_text_len = 512
  # Heads: "MLP projection" into a shared space of unstated size: LAION-CLAP's
  # Linear-ReLU-Linear into 512.
  c.model.embed_dim = 32 if runlocal else 512
  c.model.head_hidden = c.model.embed_dim
  c.model.head_activation = "relu"
  # Optimiser: ScaledAdam with the Eden schedule (the Zipformer recipe SPEAR comes from).
  # ScaledAdam scales each update by its parameter's RMS (floored at 1e-5), so biases
  # that start at zero, as Flax's do, barely move; icefall's ScaledLinear starts them
  # small and random. Set --config.optim.name=adam to compare.
  c.optim.name = "scaled_adam"
  c.optim.decay = "eden"
  # icefall's Zipformer values: lr_batches 7500, lr_epochs 3.5, warm-up from 0.5 x lr
  # over 500 steps, clipping at 2x the median recent gradient norm.
  c.optim.lr_batches = 7500
  c.optim.lr_epochs = 3.5
  c.optim.warmup_steps = 5 if runlocal else 500
  c.optim.warmup_start = 0.5
  c.optim.clipping_scale = 2.0
  c.optim.grad_clip = None
  # An epoch of the paper's 47k hours at 6,400 s of audio per step: ~26,400 steps.
  c.optim.steps_per_epoch = 20 if runlocal else 26_400
  # 8 x A100 80 GB, 800 s of audio per GPU (duration batching): ~78 ten-second clips
  # per GPU; here fixed 10 s windows, 624 clips per step.
  c.global_batch_size = int(args.get("batch", 8 if runlocal else 624))
  if stage == 1:
    # Stage 1: one fine-grained caption per clip; 1.2M steps at peak lr 0.045.
    configs.set_terms(c, info_nce=1.0)
    c.input.caption_pool = "fine"
    c.optim.lr = 0.045
    if not runlocal:
      # SPEAR's pretrained weights move at 0.001 (0.045 x 0.0222), as the CLSP authors'
      # icefall fine-tuning script passes --encoder-lr-scale 0.02222; from scratch, set
      # --config.optim.lr_mults="()".
      c.optim.lr_mults = (("audio/.*", 0.02222),)
    c.total_steps = int(args.get("steps", 30 if runlocal else 1_200_000))
  else:
    # Stage 2: from stage 1's checkpoint; multi-positive InfoNCE, N x 2N logits, target
    # lambda / 1 - lambda on the clip's two captions (audio->text), one-hot on the clip
    # (text->audio); 4k steps at peak lr 0.001.
    c.required = ("init_from",)      # --config.init_from=<stage 1 workdir>
    configs.set_terms(c, multi_positive=1.0)
    c.loss.multi_positive_lambda = 0.5
    c.input.captions_per_clip = 2
    c.input.caption_pool = "task_pairs"
    c.input.task_schedule = dict(p0=0.95, p_min=float(args.get("p_min", 0.5)),
                                 steps=20 if runlocal else 10_000)
    c.optim.lr = 0.001
    c.total_steps = int(args.get("steps", 20 if runlocal else 4000))
  # Evaluation: global and fine-grained retrieval (R@1/5/10, mAP@10), zero-shot
  # classification (weighted / unweighted accuracy), correlation with graded ratings.
  c.evals = dict(zero_shot=dict(type="zero_shot", every=0),
                 retrieval=dict(type="retrieval", every=0),
                 retrieval_fine=dict(type="retrieval", every=0, pool="fine"),
                 multiclass=dict(type="multiclass", every=0),
                 graded=dict(type="graded", every=0))
  return c

r"""CLAP (Elizalde et al., 2023, "CLAP: learning audio concepts from natural language
supervision", ICASSP 2023, arXiv:2206.04769): CNN14 + BERT-base, linear maps to 1024, symmetric
InfoNCE, Adam 1e-3 with reduce-on-plateau.

  python -m jaxclap.main --config=configs/clap.py --workdir=DIR       # the paper's sizes
  python -m jaxclap.main --config=configs/clap.py:runlocal            # CPU, a few minutes
  python -m jaxclap.main --config=configs/clap.py:frozen=audio        # Table 2 ablation

Arguments (comma-separated): steps=N, batch=N, scale=X (corpus size), runlocal (small
towers on the embedded corpus), frozen=none|audio|text (which encoder stays as
initialised: the paper's Table 2 finds training both best).

Pretrained towers: --config.model.audio.init=Cnn14_mAP=0.431.pth (PANNs, AudioSet) and
--config.model.text.init=<bert-base-uncased folder>. Real data: --config.input.sources
(see jaxclap/configs.py, where every field is documented).
"""

from jaxclap import configs

NAME = "configs/clap.py"


def get_config(arg: str | None = None):
  args = configs.parse(arg, NAME, {"frozen": ("none", "audio", "text")})
  runlocal = bool(args.get("runlocal"))
  c = configs.base(args)
  # Audio: CNN14 (PANNs; 80.8M parameters, 2048-d embedding, AudioSet-pretrained).
  c.model.audio = configs.tower(configs.AUDIO, "cnn14", runlocal)
  # Text: BERT-base uncased, [CLS] of the last layer (768-d; 110M parameters).
  # runlocal: all-MiniLM-L6-v2 (a 6-layer BERT; jaxclap.configs.minilm_text), [CLS].
  c.model.text = configs.tower(configs.TEXT, "bert", False, hidden_size=768, depth=12,
                               num_heads=12, mlp_dim=3072)
  c.tokenizer = dict(kind="wordpiece", path="bert-base-uncased")  # set to its folder
  if runlocal:
    configs.minilm_text(c, frozen=False, pooling="cls")
  c.input.truncate_chars = 100       # "max text sequence length to 100 chars"
  c.input.max_text_len = 40          # 100 characters fit in 40 WordPiece tokens
  # Projection: two learnable linear maps into d = 1024.
  c.model.embed_dim = 32 if runlocal else 1024
  c.model.head = "linear"
  # Features: log-mel at 44.1 kHz, window 1024, hop 320, 64 bins, 50-8000 Hz; random 5 s
  # crop or pad. CNN14's bn0 normalises the mel bins, so the input is raw dB.
  c.input.sample_rate = c.features.sample_rate = 16000 if runlocal else 44100
  c.features.update(target_rate=44100, n_fft=1024, win_length=1024, hop_length=320,
                    n_mels=64, fmin=50.0, fmax=8000.0, pad_mode="reflect",
                    norm_mean=0.0, norm_std=1.0, frames_multiple=1)
  c.input.clip_seconds = 2.0 if runlocal else 5.0
  # Loss: symmetric cross-entropy over the N x N similarities; tau learnable, initialised
  # to 0.007 with logits capped at 100: log(1 / 0.007) = 4.96 sits above the cap ln 100,
  # so the multiplier starts (clamped) at 100.
  configs.set_terms(c, info_nce=1.0)
  c.model.logit_scale_init = 4.9618  # log(1 / 0.007)
  # Optimiser: Adam, lr 1e-3, reduce-on-plateau x0.1 with patience 10 (epochs in the
  # paper; here windows of `accumulation_size` steps of training loss), 40 epochs.
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 0
  c.optim.decay = "constant"
  c.optim.grad_clip = None
  # One "epoch": ~1,000 steps of the paper's 128k pairs at batch 128; runlocal ~25
  # (a shorter window cuts the lr on batch-to-batch noise alone).
  c.optim.plateau = dict(factor=0.1, patience=10, cooldown=0,
                         accumulation_size=25 if runlocal else 1000)
  # The paper does not state its batch; 128 here.
  c.global_batch_size = int(args.get("batch", 8 if runlocal else 128))
  c.total_steps = int(args.get("steps", 30 if runlocal else 40 * 1000))  # 40 epochs of ~1k steps
  frozen = args.get("frozen", "none")
  if frozen != "none":
    c.optim.frozen = (f"{frozen}/.*",)
    c.optim.lr_mults = ()
  c.evals = dict(zero_shot=dict(type="zero_shot", every=0),
                 retrieval=dict(type="retrieval", every=0))
  return c

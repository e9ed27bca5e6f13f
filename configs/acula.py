r"""AcuLa ("Language Models as Semantic Teachers: Post-Training Alignment for Medical
Audio Understanding"): post-training alignment of a pre-trained audio encoder
to a FROZEN medical language model: L = (1 - CKA(audio, text)) + L_mae, equal weights,
with one random waveform augmentation per sample.

  python -m jaxclap.main --config=configs/acula.py --workdir=DIR    # the paper's sizes
  python -m jaxclap.main --config=configs/acula.py:runlocal         # CPU, a few minutes

Arguments: steps=N, batch=N, scale=X, runlocal.

Towers: --config.model.audio.init=<OPERA-GT checkpoint (a ViT MAE on respiratory
audio)>; --config.model.text.init=<medgemma-4b folder> and --config.tokenizer.path=<its
tokenizer.model>. The paper's learning rate is lost from its text ("a learning rate of
to both..."): 1e-4 here, AudioMAE's fine-tuning value; say so if you report results.
"""

from jaxclap import configs

NAME = "configs/acula.py"


def get_config(arg: str | None = None):
  args = configs.parse(arg, NAME)
  runlocal = bool(args.get("runlocal"))
  c = configs.base(args)
  # Audio: OPERA-GT, a ViT masked autoencoder with 384-d features (ViT-S shape).
  c.model.audio = configs.tower(
      configs.AUDIO, "vit", runlocal, pooling="mean",
      **({} if runlocal else dict(width=384, depth=12, num_heads=6, mlp_dim=1536,
                                  mae_width=192, mae_depth=2, mae_heads=6, mask_ratio=0.7)))
  # Text: MedGemma-4B, FROZEN (no gradient, no optimiser state), last-layer states
  # mean-pooled; run in bfloat16 as a teacher.
  # runlocal: all-MiniLM-L6-v2, frozen likewise (jaxclap.configs.minilm_text).
  if runlocal:
    configs.minilm_text(c, frozen=True)
  else:
    c.model.text = configs.preset_tower("gemma3", "medgemma-4b", dtype="bfloat16")
    c.tokenizer = dict(kind="gemma", path="medgemma-4b/tokenizer.model")  # set it
    c.optim.frozen = ("text/.*",)
  # Heads: audio 384 -> 1024 -> 512 (ReLU, 20% dropout); text -> 512 (a single map; the
  # paper says 2048-d MedGemma states, but MedGemma-4B's hidden size is 2560).
  c.model.embed_dim = 32 if runlocal else 512
  c.model.audio_head = dict(kind="mlp", hidden_dim=64 if runlocal else 1024,
                            activation="relu", dropout_rate=0.2)
  c.model.text_head = dict(kind="linear")
  # Loss: L_align (1 - linear CKA over the batch) + L_ssm (masked reconstruction).
  configs.set_terms(c, cka=1.0, mae=1.0)
  # Features: 8 s segments, 16 kHz, 64 mel bins.
  c.input.clip_seconds = 8.0 if not runlocal else 3.0
  c.features.n_mels = 64
  # One augmentation per sample (AugLy): +5 dB, amplitude normalisation, low-pass
  # 300 Hz, high-pass 3000 Hz.
  c.augment = dict(kinds=("gain", "normalize", "lowpass", "highpass"), gain_db=5.0,
                   lowpass_hz=300.0, highpass_hz=3000.0)
  # Optimiser: AdamW, linear schedule with 400 warm-up steps, 50 epochs; batch 24 with
  # gradient accumulation over 2 steps (48 clips per update).
  c.optim.name = "adamw"
  c.optim.lr = 1e-3 if runlocal else 1e-4
  c.optim.warmup_steps = 2 if runlocal else 400
  c.optim.decay = "linear"
  c.optim.grad_accum = 2
  c.global_batch_size = int(args.get("batch", 8 if runlocal else 48))
  c.total_steps = int(args.get("steps", 30 if runlocal else 50 * 200))  # 50 epochs
  # Evaluation: linear probe (AUROC) on frozen embeddings.
  c.evals = dict(linear_probe=dict(type="linear_probe", every=0),
                 retrieval=dict(type="retrieval", every=0))
  return c

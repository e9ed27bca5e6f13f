r"""Export a trained run to PyTorch, in one of two formats picked by the audio tower:

  python -m jaxclap.export --workdir=DIR --out=OUT [--step=N]
  path = jaxclap.export.export(workdir, out, step=None)
  variables = jaxclap.export.import_export(OUT)     # the way back, either format

* HTS-AT runs that ``ClapModel`` can hold (RoBERTa text tower, ClapProjectionLayer heads,
  transformers' front end; see below): transformers' CLAP format (``ClapModel`` +
  ``ClapProcessor``), served by transformers alone (below).

  model = transformers.ClapModel.from_pretrained(OUT)
  processor = transformers.ClapProcessor.from_pretrained(OUT)
  transformers.pipeline("zero-shot-audio-classification", model=OUT)

* Every other run (the demo's default spectrogram ViT, CNN14, HTS-AT with another text
  tower or heads / features ClapModel cannot express): the towers format
  (``export_towers``), each tower as the PyTorch class that matches it, served by
  ``jaxclap.torch_model.ClapModelTorch`` (PyTorch + transformers; no JAX):

  OUT/audio/   ``ViTMAEModel`` (num_channels=1, image_size=(frames, n_mels), patch 16,
               mask_ratio 0, our sin-cos table in embeddings.position_embeddings with a
               zero [CLS] row). It reproduces our ViT exactly, padding included: call it
               with ``noise=arange(tiles)`` (keeps tile order) and ``attention_mask``
               [b, 1 + tiles] (transformers 5's ViTMAEModel takes one)
               or, for HTS-AT, ``ClapAudioModel`` (``ClapAudioConfig`` from the tower's
               fields, ``htsat.export_torch`` weights and buffers, strict load): fed
               jaxclap's own normalised log-mel as ``input_features`` [b, 1, T, F], its
               ``pooler_output`` is our pooled output (bn0 is not folded: the front end
               is ours; no fusion: ``enable_fusion=True`` is refused)
               or, for CNN14, ``jaxclap.models.cnn14_torch.Cnn14Torch`` (no transformers class
               exists): ``config.json`` (channels, embed_dim, mel_bins, bn_eps) and
               ``model.safetensors`` in PANNs' / msclap's key names
               (``cnn14.export_torch``, the inverse of ``cnn14.import_torch``), called
               with the clip's real frames (padding masked as our Cnn14 does)
  OUT/text/    ``BertModel`` (BERT / MiniLM towers; ``add_pooling_layer=False`` unless the
               tower pools with the tanh pooler), ``RobertaModel`` (``padding_idx`` set),
               ``Qwen3Model`` or ``Gemma3TextModel``, each loaded strictly before saving,
               plus the tokenizer (ids checked against jaxclap's on probe texts)
  heads.safetensors      ``{audio,text}_head.{proj|fc_in|fc_out}.{weight,bias}`` (PyTorch
                         [out, in]) and the raw ``logit_scale`` (clamped when used)
  frontend.safetensors   the periodic Hann window and librosa's Slaney mel matrix jaxclap
                         computes with
  audio_mae_decoder.safetensors   the ViT's MAE decoder (training only; kept so that
                                  ``import_export`` gives every parameter back)
  jaxclap_export.json    format "jaxclap-towers": front end, window / hop / padding,
                         pooling, heads, tokenizer length, and the run's config

  Refused (``NotExportable``, naming the field): Kaldi fbank features, an on-device
  resampling rate (``features.target_rate``), text towers other than BERT / RoBERTa /
  Qwen3 / Gemma3, decoder options HF's models do not have, HTS-AT fusion or an HTS-AT
  whose ``num_mel_bins`` differs from ``features.n_mels``. ``import_export`` gives the
  HTS-AT / CNN14 batch-norm statistics back too (``{"params", "batch_stats"}``).

Layout: ``clap`` (the ClapModel format), ``towers`` (the towers format, dispatching to
each tower's registered ``export_torch`` / ``import_export``, ``jaxclap.models.towers``),
``tokenizer`` (the run's tokenizer for either), ``__main__`` (the CLI). The CLAP format's
details are in ``jaxclap.export.clap``'s docstring.
"""

from __future__ import annotations

import json
import os

from jaxclap.export import clap, towers
from jaxclap.export.clap import (AUDIO_PREFIX, TEXT_PREFIX, check, clamp_logit_scale,
                                 clap_config, clap_state_dict, feature_extractor_kwargs,
                                 fold_bn0, import_clap, unfold_bn0)
from jaxclap.export.tokenizer import hf_tokenizer
from jaxclap.export.towers import (FRONTEND_FILE, HEADS_FILE, TOWERS_FORMAT, export_towers,
                                   variable_shapes)
from jaxclap.export.towers import check as check_towers
from jaxclap.models.towers import NotExportable

__all__ = ["AUDIO_PREFIX", "FRONTEND_FILE", "HEADS_FILE", "NotExportable", "TEXT_PREFIX",
           "TOWERS_FORMAT", "check", "check_towers", "clamp_logit_scale", "clap_config",
           "clap_state_dict", "export", "export_towers", "feature_extractor_kwargs",
           "fold_bn0", "hf_tokenizer", "import_clap", "import_export", "unfold_bn0",
           "variable_shapes"]


def export(workdir: str, out: str, step: int | None = None) -> str:
  """Writes the run in ``workdir`` (latest checkpoint, or ``step``) to the folder ``out``
  as a transformers ``ClapModel`` + ``ClapProcessor`` when it can hold the run (HTS-AT +
  RoBERTa, see ``check``), else in the towers format (``export_towers``); returns ``out``.
  Raises ``NotExportable`` naming the config field when neither format holds the run, and
  ``FileExistsError`` when ``out`` is a file or a folder holding anything but an earlier
  export (which is replaced), before anything is written."""
  from jaxclap import checkpoints
  if os.path.isfile(out):
    raise FileExistsError(f"--out {out} is a file; name a folder to write the export to")
  if os.path.isdir(out) and os.listdir(out) and not os.path.exists(
      os.path.join(out, "jaxclap_export.json")):
    raise FileExistsError(f"--out {out} is a folder holding other files (no earlier "
                          "jaxclap export); name a new or empty folder")
  run_config = checkpoints.read_config(workdir)
  if not clap.holds_audio_tower(run_config):
    return export_towers(workdir, out, step)
  # Runs that ClapModel cannot hold go to the towers format (which refuses, naming the
  # field, what it cannot hold either); decided before the checkpoint loads.
  try:
    check(run_config)
    tok = hf_tokenizer(run_config)
  except NotExportable as e:
    try:
      check_towers(run_config)
    except NotExportable as e2:
      raise NotExportable(f"{e2} (and for transformers' ClapModel: {e})") from None
    return export_towers(workdir, out, step)
  return clap.export_clap(workdir, out, step, tok)


def import_export(folder: str) -> dict:
  """A folder written by ``export`` -> jaxclap variables: ``import_clap`` for a ClapModel
  export, else (the towers format) ``{"params": ...}`` (plus ``"batch_stats"`` for
  batch-norm towers) read back tower by tower, identical to the exported ones."""
  with open(os.path.join(folder, "jaxclap_export.json")) as f:
    meta = json.load(f)
  if meta.get("format") != TOWERS_FORMAT:
    return import_clap(folder)
  return towers.import_towers(folder, meta)

"""``python -m jaxclap.export --workdir=RUN --out=OUT [--step=N]``: the export CLI."""

from __future__ import annotations

import argparse
import sys

from jaxclap.export import NotExportable, export

def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m jaxclap.export",
      description="Export a jaxclap run to PyTorch. HTS-AT runs (+ RoBERTa text tower, "
                  "MLP heads) become transformers' CLAP format: ClapModel weights and "
                  "config plus a ClapProcessor (feature extractor + tokenizer), loadable "
                  "with ClapModel.from_pretrained(OUT) and pipeline('zero-shot-audio-"
                  "classification', model=OUT). Other runs (spectrogram ViT, CNN14, other "
                  "HTS-AT runs) become the towers format: OUT/audio a ViTMAEModel / "
                  "ClapAudioModel / Cnn14Torch, OUT/text a BertModel / RobertaModel / "
                  "Qwen3Model / Gemma3TextModel with its tokenizer, heads and front end "
                  "files; serve it with jaxclap.torch_model.ClapModelTorch.from_pretrained"
                  "(OUT).",
      epilog="Runs with no exact equivalent (for ClapModel: linear heads, a head width "
             "other than embed_dim, win_length != n_fft, constant STFT padding, ...; for "
             "the towers format: fbank features, on-device resampling, other text "
             "towers) are refused with the config field named. The exported ClapModel "
             "processor embeds one random crop of clips longer than input.clip_seconds, "
             "where jaxclap averages windows; see the jaxclap.export docstring.")
  parser.add_argument("--workdir", required=True,
                      help="the run folder written by python -m jaxclap.main")
  parser.add_argument("--out", required=True,
                      help="the folder to write (created; an earlier export there is "
                           "replaced, a file or a folder of other files is refused)")
  parser.add_argument("--step", type=int, default=None,
                      help="the checkpoint step to export (default: the latest)")
  args = parser.parse_args(argv)
  from jaxclap import host
  host.skip_absent_accelerators()
  try:
    path = export(args.workdir, args.out, args.step)
  except (NotExportable, FileNotFoundError, FileExistsError) as e:
    print(f"jaxclap.export: {e}", file=sys.stderr)
    return 2
  print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""Builders for public corpora (checkout-only, like configs/): one script per corpus.

  python data/esc50.py --download_dir=~/downloads/ESC-50-master --out=~/corpora

Each reads the user's manual download (no network at build time) and writes the one
record format of ``jaxclap.corpus.records`` with the corpus's splits and its declared
tasks (tasks.json). ``_common.py`` holds what they share; docs/data.md lists them.
"""

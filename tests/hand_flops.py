"""Hand counts of the towers' matmul FLOPs, against which the counted and the compiled
FLOPs of a step are checked (tests/test_perf.py, tests/test_aot.py)."""


def layer_flops(tokens: int, seq: int, width: int, mlp: int) -> int:
  """Forward FLOPs of one transformer encoder layer over ``tokens`` tokens in sequences
  of ``seq``: q, k, v and output projections (4 w^2 multiply-adds per token), the MLP
  (2 w mlp), scores and the weighted sum of values (2 seq w): 2 FLOPs a multiply-add."""
  return 2 * tokens * (4 * width * width + 2 * width * mlp) + 4 * tokens * seq * width


def minilm_layer(batch: int, length: int) -> int:
  # all-MiniLM-L6-v2: 384 wide, MLP 1536; runlocal captions of 56 tokens.
  return layer_flops(batch * length, length, 384, 1536)


def runlocal_vit(batch: int) -> int:
  """The runlocal ViT's forward: 3 s at a 10 ms hop -> 301 frames, cut to 288 (a multiple
  of the 16-frame patch) x 64 mel bins -> 18 x 4 = 72 patches of 256 values; one layer 32
  wide, MLP 64. Under 1% of either config's count: the text tower dominates."""
  patches = 72
  embed = 2 * batch * patches * 256 * 32
  return embed + layer_flops(batch * patches, patches, 32, 64)

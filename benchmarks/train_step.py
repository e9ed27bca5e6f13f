"""Steps/s of jaxclap's jitted train step against the same two towers trained in PyTorch.

  python benchmarks/train_step.py [--batch 48] [--rounds 5] [--steps 2] [--torch_compile]
                                  [--profile] [--xla_flags "..."]

Measures, in one process and on one random batch of the demo config's shapes
(configs/demo.py: 3 s clips at 16 kHz, its max_text_len, global_batch_size 48):

  jax     ``jaxclap.train.Trainer(config, mesh).step`` on a 1-device mesh (donated state,
          block_until_ready on the metrics). ``model.text.init=None``: random text weights,
          the cost is the same as with MiniLM's. Every parameter trains, text at 0.1x lr,
          as on the torch side (the demo freezes MiniLM; the benchmark does not).
  torch   a hand-written PyTorch train step doing the identical computation: log-mel with
          torch.stft (same n_fft / hop / win, periodic Hann, centre zero padding), the
          librosa.filters.mel matrix, power_to_db and the (dB - mean) / std normalisation;
          the AudioMAE-shaped ViT (16x16 tiles time-major, linear patch embedding, CLS, fixed
          2-D sin-cos positions, pre-LN blocks with exact GELU, final LayerNorm, masked mean
          pooling over real tiles); the MAE pass (random masking, encoder on the visible
          tiles, 1-layer decoder with mask tokens, per-tile normalised MSE on masked tiles;
          with ``model.audio.shared_mae_pass``, the demo's, its visible tiles pooled are the
          contrastive embedding and there is no full pass);
          the text tower = transformers ``BertModel`` (MiniLM shape, no pooler, sdpa
          attention) with masked mean pooling; MLP heads; symmetric InfoNCE with the clamped
          learnable logit scale; ``lambda * contrastive + mae_weight * mae``; grad clipping
          by global norm and AdamW (decay on >= 2-D params, text at 0.1x lr, warm-up + cosine).
          Eager by default, plus ``torch.compile`` of the loss with --torch_compile.

The two frameworks run back to back in rounds (jax steps, then torch steps, ...) so that load
from other processes hits both alike; each figure is the median over all timed steps
(the best step is printed too).
speedup = jax steps/s / torch steps/s; the target is >= 1.3 on a CPU. Both use every core:
XLA's CPU thread pool and torch.set_num_threads(os.cpu_count()).

--profile adds a per-part breakdown of both steps (front end, audio tower + head fwd+bwd,
MAE pass fwd+bwd, text tower + head fwd+bwd, the optimiser update), each part jitted (JAX)
or run eagerly (torch) on its own; the parts do not add up exactly to the fused step.
--xla_flags sets XLA_FLAGS before JAX starts, to try compiler options (see docs/benchmarks.md).

Measurements and what was tried are logged in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)


# ------------------------------------------------------------------------------ batch


def make_batch(config, batch: int, seed: int = 0):
  """Random host batch in the input pipeline's layout (text ``[b, 1, L]``: one caption
  per clip): full-length clips, captions of 8..L tokens."""
  import numpy as np
  rng = np.random.default_rng(seed)
  samples = int(round(float(config.input.clip_seconds) * int(config.input.sample_rate)))
  length = int(config.input.max_text_len)
  lens = rng.integers(8, length + 1, batch)
  mask = (np.arange(length)[None, :] < lens[:, None]).astype(np.int32)
  ids = rng.integers(1000, int(config.model.text.vocab_size), (batch, length)).astype(np.int32)
  ids = ids * mask
  ids[:, 0] = 101
  ids[np.arange(batch), lens - 1] = 102
  return {"audio": (0.1 * rng.standard_normal((batch, samples))).astype(np.float32),
          "audio_len": np.full((batch,), samples, np.int32),
          "text_ids": ids[:, None, :], "text_mask": mask[:, None, :]}


def median_time(fn, n: int) -> list[float]:
  out = []
  for _ in range(n):
    t = time.perf_counter()
    fn()
    out.append(time.perf_counter() - t)
  return out


# ------------------------------------------------------------------------------ JAX


class JaxSide:
  """The library's own jitted step, plus jitted parts of it for --profile."""

  def __init__(self, config, host_batch):
    import jax
    from jaxclap import sharding, train
    self.jax = jax
    self.mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    self.trainer = train.Trainer(config, self.mesh)
    self.state = self.trainer.init_state(int(config.seed))
    self.batch = sharding.global_batch(host_batch, self.mesh)

  def num_params(self) -> int:
    return sum(int(x.size) for x in self.jax.tree_util.tree_leaves(self.state.params))

  def step(self):
    self.state, metrics = self.trainer.step(self.state, self.batch)
    self.jax.block_until_ready(metrics)
    return metrics

  def parts(self):
    """{name: callable} each running one jitted part to completion."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax
    from jaxclap import losses
    tr, model, b = self.trainer, self.trainer.model, self.batch
    params = self.state.params
    cfg = tr.config.loss
    spec, frames = jax.jit(tr.features)(b)

    def sub_grad(keys, fn):
      """jit(value_and_grad) of fn(params) w.r.t. the top-level params ``keys`` only."""
      def loss(sub, rest):
        with nn.logical_axis_rules(tr.rules):
          return fn({**rest, **sub})
      vg = jax.jit(jax.value_and_grad(loss))
      sub = {k: params[k] for k in keys}
      rest = {k: v for k, v in params.items() if k not in keys}
      return lambda: jax.block_until_ready(vg(sub, rest))

    audio = sub_grad(("audio", "audio_head"), lambda p: jnp.sum(model.apply(
        {"params": p}, spec, frames, method=model.embed_audio)))
    rng = jax.random.PRNGKey(1)

    def mae(p):
      pred, target, mask = model.apply({"params": p}, spec, frames, rng,
                                       method=model.reconstruct)
      return losses.mae_loss(pred, target, mask, norm_pix=bool(cfg.norm_pix))

    mae_part = sub_grad(("audio",), mae)
    text = sub_grad(("text", "text_head"), lambda p: jnp.sum(model.apply(
        {"params": p}, b["text_ids"][:, 0], b["text_mask"][:, 0], method=model.embed_text)))
    feats = jax.jit(tr.features)
    model_state = self.state.model_state
    loss_fwd = jax.jit(lambda p, bb, r: tr.loss_fn(p, model_state, bb, r)[0])

    def _fwd():
      with nn.logical_axis_rules(tr.rules):
        return jax.block_until_ready(loss_fwd(params, b, rng))

    grads = jax.tree_util.tree_map(jnp.ones_like, params)

    @jax.jit
    def opt(g, o, p):
      u, o = tr.tx.update(g, o, p)
      return optax.apply_updates(p, u), o

    opt_state = self.state.opt_state
    return {"front end (log-mel)": lambda: jax.block_until_ready(feats(b)),
            "audio tower+head fwd+bwd": audio,
            "MAE pass fwd+bwd": mae_part,
            "text tower+head fwd+bwd": text,
            "optimiser (clip+AdamW)": lambda: jax.block_until_ready(opt(grads, opt_state, params)),
            "whole loss fwd only": _fwd}


# ------------------------------------------------------------------------------ PyTorch


def build_torch(config):
  """(model, optimizer, scheduler) of the PyTorch reference; see the module docstring."""
  import librosa
  import numpy as np
  import torch
  import torch.nn.functional as F
  from torch import nn
  from transformers import BertConfig, BertModel

  from jaxclap.models.vit import sincos_2d

  fc, ac, tc, mc = config.features, config.model.audio, config.model.text, config.model
  SHARED = bool(ac.get("shared_mae_pass"))

  def linear(i, o):
    m = nn.Linear(i, o)
    nn.init.normal_(m.weight, std=0.02)
    nn.init.zeros_(m.bias)
    return m

  class Attention(nn.Module):
    def __init__(self, d, heads):
      super().__init__()
      self.h = heads
      self.query, self.key, self.value, self.out = (linear(d, d) for _ in range(4))

    def forward(self, x, mask):  # mask [b, t] bool, True = attend
      b, t, d = x.shape
      split = lambda y: y.view(b, t, self.h, d // self.h).transpose(1, 2)
      o = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)),
                                         split(self.value(x)), attn_mask=mask[:, None, None, :])
      return self.out(o.transpose(1, 2).reshape(b, t, d))

  class Block(nn.Module):  # pre-LN, exact GELU
    def __init__(self, d, heads, mlp, eps):
      super().__init__()
      self.attn_norm, self.mlp_norm = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
      self.attn = Attention(d, heads)
      self.mlp = nn.Sequential(linear(d, mlp), nn.GELU(), linear(mlp, d))

    def forward(self, x, mask):
      x = x + self.attn(self.attn_norm(x), mask)
      return x + self.mlp(self.mlp_norm(x))

  class Encoder(nn.Module):
    def __init__(self, depth, d, heads, mlp, eps):
      super().__init__()
      self.blocks = nn.ModuleList(Block(d, heads, mlp, eps) for _ in range(depth))

    def forward(self, x, mask):
      for blk in self.blocks:
        x = blk(x, mask)
      return x

  class Head(nn.Module):
    def __init__(self, i):
      super().__init__()
      hid = int(mc.head_hidden or mc.embed_dim)
      self.net = nn.Sequential(linear(i, hid), nn.GELU(), linear(hid, int(mc.embed_dim)))

    def forward(self, x):
      return F.normalize(self.net(x), dim=-1, eps=1e-6)

  class ViT(nn.Module):
    def __init__(self):
      super().__init__()
      w, p, eps = int(ac.width), int(ac.patch), 1e-6
      self.p, self.w, self.mae_w = p, w, int(ac.mae_width)
      self.patch_embed = linear(p * p, w)
      self.cls = nn.Parameter(0.02 * torch.randn(1, 1, w))
      self.encoder = Encoder(int(ac.depth), w, int(ac.num_heads), int(ac.mlp_dim), eps)
      self.norm = nn.LayerNorm(w, eps=eps)
      self.dec_embed = linear(w, self.mae_w)
      self.mask_token = nn.Parameter(0.02 * torch.randn(1, 1, self.mae_w))
      self.decoder = Encoder(int(ac.mae_depth), self.mae_w, int(ac.mae_heads), 4 * self.mae_w, eps)
      self.dec_norm = nn.LayerNorm(self.mae_w, eps=eps)
      self.dec_pred = linear(self.mae_w, p * p)
      # Fixed positions as buffers (the grid follows from the clip length), so that
      # torch.compile sees no Python-side cache.
      samples = int(round(float(config.input.clip_seconds) * int(fc.sample_rate)))
      frames = 1 + samples // int(fc.hop_length)
      frames = frames // int(fc.frames_multiple) * int(fc.frames_multiple)
      gt, gf = frames // p, int(fc.n_mels) // p
      self.register_buffer("pos_enc", torch.from_numpy(sincos_2d(w, gt, gf)), persistent=False)
      self.register_buffer("pos_dec", torch.from_numpy(sincos_2d(self.mae_w, gt, gf)),
                           persistent=False)

    def tokens(self, spec):
      b, t, f = spec.shape
      p = self.p
      tiles = spec.reshape(b, t // p, p, f // p, p).permute(0, 1, 3, 2, 4).reshape(
          b, (t // p) * (f // p), p * p)
      return self.patch_embed(tiles) + self.pos_enc, tiles

    def valid(self, frames, t, f):
      vt = (torch.arange(t // self.p) * self.p)[None, :] < frames[:, None]
      return vt.repeat_interleave(f // self.p, dim=1)

    def encode(self, x, valid):
      b = x.shape[0]
      x = torch.cat([self.cls.expand(b, 1, self.w), x], dim=1)
      mask = torch.cat([torch.ones(b, 1, dtype=torch.bool), valid], dim=1)
      return self.norm(self.encoder(x, mask))

    def forward(self, spec, frames):
      x, _ = self.tokens(spec)
      valid = self.valid(frames, spec.shape[1], spec.shape[2])
      h = self.encode(x, valid)
      m = valid[..., None].to(h.dtype)
      return (h[:, 1:] * m).sum(1) / m.sum(1).clamp_min(1.0)

    def reconstruct(self, spec, frames):
      x, tiles = self.tokens(spec)
      b, n, _ = x.shape
      valid = self.valid(frames, spec.shape[1], spec.shape[2])
      keep = max(1, int(round(n * (1 - float(ac.mask_ratio)))))
      noise = torch.rand(b, n) + (~valid).to(torch.float32) * 2.0
      shuffle = torch.argsort(noise, dim=1)
      restore = torch.argsort(shuffle, dim=1)
      keep_idx = shuffle[:, :keep]
      removed = torch.ones(b, n)
      removed[:, :keep] = 0
      removed = torch.gather(removed, 1, restore)
      visible = torch.gather(x, 1, keep_idx[..., None].expand(-1, -1, self.w))
      kept = torch.gather(valid, 1, keep_idx)
      h = self.encode(visible, kept)
      d = self.dec_embed(h)
      filler = self.mask_token.expand(b, n - keep, self.mae_w)
      full = torch.cat([d[:, 1:], filler], dim=1)
      full = torch.gather(full, 1, restore[..., None].expand(-1, -1, self.mae_w))
      full = torch.cat([d[:, :1], full + self.pos_dec], dim=1)
      dmask = torch.cat([torch.ones(b, 1, dtype=torch.bool), valid], dim=1)
      pred = self.dec_pred(self.dec_norm(self.decoder(full, dmask)))[:, 1:]
      m = kept[..., None].to(h.dtype)   # the visible tiles pooled (shared_mae_pass)
      pooled = (h[:, 1:] * m).sum(1) / m.sum(1).clamp_min(1.0)
      return pred, tiles, removed * valid.to(removed.dtype), pooled

  class TwoTowers(nn.Module):
    def __init__(self):
      super().__init__()
      self.audio = ViT()
      self.text = BertModel(BertConfig(
          vocab_size=int(tc.vocab_size), hidden_size=int(tc.hidden_size),
          num_hidden_layers=int(tc.depth), num_attention_heads=int(tc.num_heads),
          intermediate_size=int(tc.mlp_dim), max_position_embeddings=int(tc.max_len),
          hidden_act="gelu", layer_norm_eps=1e-12, hidden_dropout_prob=0.0,
          attention_probs_dropout_prob=0.0), add_pooling_layer=False)
      self.audio_head = Head(int(ac.width))
      self.text_head = Head(int(tc.hidden_size))
      self.logit_scale = nn.Parameter(torch.tensor(float(mc.logit_scale_init)))
      win = torch.hann_window(int(fc.win_length), periodic=True)
      basis = librosa.filters.mel(sr=int(fc.sample_rate), n_fft=int(fc.n_fft),
                                  n_mels=int(fc.n_mels), fmin=float(fc.fmin),
                                  fmax=float(fc.fmax), htk=False, norm="slaney")
      self.register_buffer("window", win, persistent=False)
      self.register_buffer("mel_basis", torch.from_numpy(np.asarray(basis, np.float32)),
                           persistent=False)

    def features(self, wave, lengths):
      s = torch.stft(wave, n_fft=int(fc.n_fft), hop_length=int(fc.hop_length),
                     win_length=int(fc.win_length), window=self.window, center=True,
                     pad_mode="constant", return_complex=True)  # [b, freq, frames]
      power = s.real.square() + s.imag.square()
      mel = torch.matmul(self.mel_basis, power)  # [b, n_mels, frames]
      db = 10.0 * torch.log10(mel.clamp_min(1e-10))
      spec = (db.transpose(1, 2) - float(fc.norm_mean)) / float(fc.norm_std)
      mult = int(fc.frames_multiple)
      usable = spec.shape[1] // mult * mult
      frames = torch.clamp(lengths // int(fc.hop_length) + 1, max=usable)
      return spec[:, :usable], frames

    def forward(self, wave, lengths, ids, tmask):
      spec, frames = self.features(wave, lengths)
      pred, target, mask, visible = self.audio.reconstruct(spec, frames)
      # shared_mae_pass (the demo's): one encoder pass, the MAE's visible tiles pooled.
      a = self.audio_head(visible if SHARED else self.audio(spec, frames))
      hid = self.text(input_ids=ids, attention_mask=tmask).last_hidden_state
      m = tmask[..., None].to(hid.dtype)
      t = self.text_head((hid * m).sum(1) / m.sum(1).clamp_min(1.0))
      scale = self.logit_scale.clamp(0.0, math.log(100.0))
      logits = scale.exp() * a @ t.T
      labels = torch.arange(a.shape[0])
      loss = float(config.loss.terms.info_nce) * 0.5 * (
          F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
      mean = target.mean(-1, keepdim=True)
      var = target.var(-1, keepdim=True, unbiased=True)
      target = (target - mean) / torch.sqrt(var + 1e-6)
      per_tile = ((pred - target) ** 2).mean(-1)
      mae = (per_tile * mask).sum() / mask.sum().clamp_min(1.0)
      return loss + float(config.loss.terms.mae) * mae

  model = TwoTowers()
  oc = config.optim
  groups = {}
  for name, p in model.named_parameters():
    mult = 0.1 if name.startswith("text.") else 1.0
    wd = float(oc.weight_decay) if p.ndim > 1 else 0.0
    groups.setdefault((mult, wd), []).append(p)
  opt = torch.optim.AdamW(
      [dict(params=ps, lr=float(oc.lr) * mult, weight_decay=wd)
       for (mult, wd), ps in groups.items()],
      lr=float(oc.lr), betas=(0.9, 0.999), eps=1e-8, foreach=True)
  warm, total = int(oc.warmup_steps), int(config.total_steps)

  def sched(step):
    if step < warm:
      return step / warm
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

  return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, sched)


class TorchSide:
  def __init__(self, config, host_batch, compile_: bool):
    import torch
    self.torch = torch
    torch.manual_seed(0)
    self.model, self.opt, self.sched = build_torch(config)
    self.model.train()
    self.params = [p for p in self.model.parameters() if p.requires_grad]
    self.clip = float(config.optim.grad_clip)
    self.batch = [torch.from_numpy(host_batch[k]) for k in
                  ("audio", "audio_len", "text_ids", "text_mask")]
    self.batch[1] = self.batch[1].long()
    # The reference model takes one caption per clip: [b, L].
    self.batch[2] = self.batch[2][:, 0].long()
    self.batch[3] = self.batch[3][:, 0]
    self.loss = torch.compile(self.model) if compile_ else self.model

  def num_params(self) -> int:
    return sum(p.numel() for p in self.params)

  def step(self):
    self.opt.zero_grad(set_to_none=True)
    loss = self.loss(*self.batch)
    loss.backward()
    self.torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
    self.opt.step()
    self.sched.step()
    return float(loss.detach())

  def parts(self):
    torch, m = self.torch, self.model
    wave, lens, ids, tmask = self.batch
    with torch.no_grad():
      spec, frames = m.features(wave, lens)

    def audio():
      m.zero_grad(set_to_none=True)
      m.audio_head(m.audio(spec, frames)).sum().backward()

    def mae():
      m.zero_grad(set_to_none=True)
      pred, target, mask, _ = m.audio.reconstruct(spec, frames)
      mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
      target = (target - mean) / torch.sqrt(var + 1e-6)
      ((((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()).backward()

    def text():
      m.zero_grad(set_to_none=True)
      hid = m.text(input_ids=ids, attention_mask=tmask).last_hidden_state
      mm = tmask[..., None].to(hid.dtype)
      m.text_head((hid * mm).sum(1) / mm.sum(1)).sum().backward()

    def opt():
      for p in self.params:
        p.grad = torch.ones_like(p)
      torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
      self.opt.step()

    def fwd():
      with torch.no_grad():
        m(*self.batch)

    def feats():
      with torch.no_grad():
        m.features(wave, lens)

    return {"front end (log-mel)": feats, "audio tower+head fwd+bwd": audio,
            "MAE pass fwd+bwd": mae, "text tower+head fwd+bwd": text,
            "optimiser (clip+AdamW)": opt, "whole loss fwd only": fwd}


# ------------------------------------------------------------------------------ main


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n\n", 1)[1])
  parser.add_argument("--batch", type=int, default=None,
                      help="global batch size (default: the demo config's, 48)")
  parser.add_argument("--config_arg", default="",
                      help="argument of configs/demo.py:get_config, e.g. 'runlocal' (default '')")
  parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
  parser.add_argument("--steps", type=int, default=2,
                      help="timed steps per framework per round (default 2)")
  parser.add_argument("--warmup", type=int, default=2,
                      help="untimed steps per framework after compiling (default 2)")
  parser.add_argument("--torch_compile", action="store_true",
                      help="also time torch.compile(model) (inductor; ~2 min to compile here)")
  parser.add_argument("--profile", action="store_true",
                      help="per-part timings of both steps (see the docstring)")
  parser.add_argument("--profile_repeats", type=int, default=5,
                      help="timed runs of each part (default 5)")
  parser.add_argument("--xla_flags", default=None,
                      help="appended to XLA_FLAGS before JAX starts, e.g. "
                           "'--xla_cpu_use_onednn=true'")
  parser.add_argument("--omp_wait_policy", default="PASSIVE",
                      help="OMP_WAIT_POLICY for torch's OpenMP pool unless already set in the "
                           "environment (default PASSIVE: with ACTIVE spinning, other "
                           "processes on the cores made torch 5x slower here; 'unset' leaves it)")
  parser.add_argument("--skip_torch", action="store_true", help="time JAX only")
  args = parser.parse_args(argv)

  if args.xla_flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
  if args.omp_wait_policy != "unset":  # read when libgomp loads: before importing torch
    os.environ.setdefault("OMP_WAIT_POLICY", args.omp_wait_policy)

  import jax
  import torch

  from jaxclap import configs

  config = configs.load("demo", args.config_arg)
  config.model.text.init = None  # random weights: same cost, no download
  # Both sides train the same parameters: everything, the text tower at 0.1x lr (the
  # demo itself freezes MiniLM; a frozen tower here would time less work than torch's).
  config.optim.frozen = ()
  config.optim.lr_mults = (("text/.*", 0.1),)
  if args.batch:
    config.global_batch_size = args.batch
  batch_size = int(config.global_batch_size)
  threads = os.cpu_count()
  torch.set_num_threads(threads)
  host = make_batch(config, batch_size)
  dev = jax.devices()[0]
  print(f"JAX {jax.__version__} on {dev.platform} ({dev.device_kind}); torch {torch.__version__} "
        f"({torch.get_num_threads()} threads, OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}); host CPUs {threads}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"batch {batch_size} x {host['audio'].shape[1]} samples, text {host['text_ids'].shape[-1]} "
        f"tokens; {args.rounds} rounds x {args.steps} steps; load average "
        f"{os.getloadavg()[0]:.1f}", flush=True)

  t = time.perf_counter()
  js = JaxSide(config, host)
  js.step()
  print(f"jax: compile + first step {time.perf_counter() - t:.1f} s; params {js.num_params():,}",
        flush=True)
  sides = {"jax": js}
  if not args.skip_torch:
    ts = TorchSide(config, host, compile_=False)
    sides["torch eager"] = ts
    print(f"torch: params {ts.num_params():,} "
          f"(jax/torch {js.num_params() / ts.num_params():.4f})", flush=True)
    if args.torch_compile:
      tc = TorchSide(config, host, compile_=True)
      t = time.perf_counter()
      tc.step()
      print(f"torch.compile: compile + first step {time.perf_counter() - t:.1f} s", flush=True)
      sides["torch compile"] = tc

  for side in sides.values():
    for _ in range(args.warmup):
      side.step()
  times = {k: [] for k in sides}
  for r in range(args.rounds):
    for name, side in sides.items():
      times[name] += median_time(side.step, args.steps)
    print(f"round {r + 1} (load {os.getloadavg()[0]:.1f}): " + "  ".join(
        f"{k} " + "/".join(f"{x * 1e3:.0f}" for x in v[-args.steps:]) + " ms"
        for k, v in times.items()), flush=True)

  rate = {k: 1.0 / statistics.median(v) for k, v in times.items()}
  best = {k: 1.0 / min(v) for k, v in times.items()}
  print()
  for k, v in rate.items():
    print(f"{k:<14} {v:7.3f} steps/s  (median {1e3 / v:7.1f} ms/step, best {1e3 / best[k]:.0f} ms)")
  for j in (k for k in rate if k.startswith("jax")):
    for k in (k for k in rate if k.startswith("torch")):
      print(f"speedup {j} / {k}: {rate[j] / rate[k]:.2f}x median, {best[j] / best[k]:.2f}x best"
            f"  (target >= 1.3x)")

  if args.profile:
    print("\nper-part medians (ms)")
    parts = {name: side.parts() for name, side in sides.items()
             if name in ("jax", "torch eager")}
    names = list(parts["jax"])
    for part in parts.values():  # compile / warm up
      for fn in part.values():
        fn()
    res = {n: {} for n in parts}
    for _ in range(args.profile_repeats):  # interleaved like the steps
      for side, part in parts.items():
        for pname, fn in part.items():
          res[side].setdefault(pname, []).extend(median_time(fn, 1))
    print(f"{'part':<28}" + "".join(f"{s:>14}" for s in parts))
    for pname in names:
      print(f"{pname:<28}" + "".join(f"{statistics.median(res[s][pname]) * 1e3:14.1f}"
                                       for s in parts))


if __name__ == "__main__":
  main()

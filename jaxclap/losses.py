"""The losses of the five recipes, as pure functions of arrays.

* ``info_nce``: symmetric InfoNCE (CLIP / LAION-CLAP ``ClipLoss``) for CLAP, SLAP,
  Speech-CLAP and CLSP stage 1.
* ``multi_positive_info_nce``: CLSP stage 2, two captions per clip.
* ``sigmoid_loss``: SigLIP's pairwise sigmoid loss (Zhai et al. 2023), with a learnable
  bias beside the scale.
* ``mae_loss``: the masked-patch reconstruction loss of (Audio)MAE, for SLAP and AcuLa.
* ``cka_loss``: AcuLa's ``L_align = 1 - linear CKA``.
* ``clamp_logit_scale``: LAION's clamp of the learnable log-multiplier.

The contrastive losses take the GLOBAL batch. With a ``mesh`` they run under
``jax.shard_map`` with the batch dimension split over ``batch_axes`` (the other mesh axes
replicate), so a jitted train step calls them on sharded arrays as it would on one device:

* ``mode="gather"`` (big_vision's old trainer): each device all-gathers the other tower
  and scores its n local rows against all N columns. Memory O(n * N) logits.
* ``mode="chunked"``: the local text chunk travels round the ring of devices with
  ``ppermute``; each device holds one n x n block at a time and keeps an online
  log-sum-exp per row. The log-sum-exp of each text (the other direction) travels with
  its chunk and arrives home after a full turn, so one matmul per block serves both
  directions. A ``custom_vjp`` runs the ring again backwards instead of letting autodiff
  keep every block (or every visiting chunk): memory O(n * n + n * d) in forward and
  backward.

The sigmoid loss is a plain sum over the N x N pairs with no normaliser, so it needs
neither the other direction nor any statistic beyond a running sum: ``gather`` gathers
text only, and ``chunked`` (big_vision's chunked SigLIP) moves text chunks round the ring
with a ``custom_vjp`` of the same kind.

``info_nce_local`` / ``multi_positive_info_nce_local`` / ``sigmoid_loss_local`` are the
per-device bodies, for a caller already inside its own ``shard_map``.

Nothing here creates an array at import time, so importing it never starts a backend.
"""

import functools
import math

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

MODES = ("unsharded", "gather", "chunked")


# ---------------------------------------------------------------------------------------
# Per-device statistics: for local audio rows a [n, d] and local text rows t [m, d], the
# log-sum-exp of every local row over ALL partners of the other tower, plus (for metrics
# only) the row maxima and the own n x m block, where every positive lives.


def _gather_stats(a, t, log_scale, axis):
  scale = jnp.exp(log_scale)
  if axis is None:
    a_all, t_all, r = a, t, 0
  else:
    a_all = lax.all_gather(a, axis, tiled=True)
    t_all = lax.all_gather(t, axis, tiled=True)
    r = lax.axis_index(axis)
  n, m = a.shape[0], t.shape[0]
  la = scale * a @ t_all.T  # [n, M]
  lt = scale * t @ a_all.T  # [m, N]
  own_a = lax.dynamic_slice_in_dim(la, r * m, m, axis=1)
  own_t = lax.dynamic_slice_in_dim(lt, r * n, n, axis=1)
  lse = (jax.nn.logsumexp(la, axis=1), jax.nn.logsumexp(lt, axis=1))
  return lse, (la.max(axis=1), lt.max(axis=1), own_a, own_t)


def _online_lse(m, s, b, axis):
  """One step of a streaming log-sum-exp along `axis` of block b: (max, scaled sum)."""
  m_new = jnp.maximum(m, b.max(axis=axis))
  s = s * jnp.exp(m - m_new) + jnp.exp(b - jnp.expand_dims(m_new, axis)).sum(axis=axis)
  return m_new, s


def _ring_perm(axis):
  p = lax.axis_size(axis)
  return [(j, (j + 1) % p) for j in range(p)], p


def _ring_fwd(a, t, log_scale, axis):
  perm, p = _ring_perm(axis)
  scale = jnp.exp(log_scale)
  own = scale * a @ t.T
  row_m, row_s = own.max(axis=1), jnp.exp(own - own.max(axis=1, keepdims=True)).sum(axis=1)
  col_m, col_s = own.max(axis=0), jnp.exp(own - own.max(axis=0, keepdims=True)).sum(axis=0)

  def step(_, carry):
    # The text chunk and its column statistics move on together; the row statistics
    # of the local audio stay put.
    t_c, col_m, col_s, row_m, row_s = carry
    t_c, col_m, col_s = lax.ppermute((t_c, col_m, col_s), axis, perm)
    b = scale * a @ t_c.T
    row_m, row_s = _online_lse(row_m, row_s, b, 1)
    col_m, col_s = _online_lse(col_m, col_s, b, 0)
    return t_c, col_m, col_s, row_m, row_s

  _, col_m, col_s, row_m, row_s = lax.fori_loop(
      1, p, step, (t, col_m, col_s, row_m, row_s))
  # After p - 1 hops a device holds its right neighbour's chunk: one more hop sends the
  # finished column statistics home.
  col_m, col_s = lax.ppermute((col_m, col_s), axis, perm)
  lse_a, lse_t = row_m + jnp.log(row_s), col_m + jnp.log(col_s)
  out = ((lse_a, lse_t), (row_m, col_m, own, own.T))
  return out, (a, t, log_scale, lse_a, lse_t)


def _ring_bwd(axis, res, cts):
  a, t, log_scale, lse_a, lse_t = res
  (g_a, g_t), _ = cts  # the metric outputs carry no gradient
  perm, p = _ring_perm(axis)
  scale = jnp.exp(log_scale)

  def block(t_c, lse_t_c, g_t_c):
    # d(lse)/d(logit) is the softmax of its row (audio) or column (text), rebuilt from
    # the saved log-sum-exps; the two directions add into one n x m cotangent block.
    b = scale * a @ t_c.T
    gb = (jnp.exp(b - lse_a[:, None]) * g_a[:, None]
          + jnp.exp(b - lse_t_c[None, :]) * g_t_c[None, :])
    # d/d log_scale = sum(gb * b), summed as sum(gb * (b - lse_a)) + lse_a . rowsum(gb):
    # the long reduction then runs over softmax-weighted log-probabilities rather than
    # logits of ~100, which keeps float32 as accurate as the reference when the gradient
    # is a small difference of large terms (measured: 2.6e-5 -> 1e-6 absolute).
    return gb, jnp.sum(gb * (b - lse_a[:, None])), gb.sum(axis=1)

  gb, ds, rs = block(t, lse_t, g_t)
  init = (t, lse_t, g_t, gb.T @ a, gb @ t, ds, rs)

  def step(_, carry):
    # The chunk travels with its softmax statistics and its accumulating gradient.
    t_c, lse_t_c, g_t_c, dt_c, da, ds, rs = carry
    t_c, lse_t_c, g_t_c, dt_c = lax.ppermute((t_c, lse_t_c, g_t_c, dt_c), axis, perm)
    gb, ds_c, rs_c = block(t_c, lse_t_c, g_t_c)
    return t_c, lse_t_c, g_t_c, dt_c + gb.T @ a, da + gb @ t_c, ds + ds_c, rs + rs_c

  _, _, _, dt, da, ds, rs = lax.fori_loop(1, p, step, init)
  dt = lax.ppermute(dt, axis, perm)
  # logits = exp(log_scale) * a @ t.T, so d logits / d log_scale = logits.
  ds = ds + jnp.sum(lse_a * rs)
  return scale * da, scale * dt, ds


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _ring_stats(a, t, log_scale, axis):
  return _ring_fwd(a, t, log_scale, axis)[0]


_ring_stats.defvjp(_ring_fwd, _ring_bwd)


def _varying_axes(x):
  aval = jax.typeof(x)
  # jax 0.10 keeps the varying manual axes in manual_axis_type; earlier releases in vma.
  manual = getattr(aval, "manual_axis_type", None)
  return manual.varying if manual is not None else getattr(aval, "vma", frozenset())


def _to_varying(x, axis):
  # A scalar parameter is usually replicated; making it device-varying first gives its
  # cotangent (a per-device partial sum from a ring's backward pass) the right type, and
  # the cast's transpose is the psum that adds the parts.
  missing = tuple(a for a in axis if a not in _varying_axes(x))
  return lax.pcast(x, missing, to="varying") if missing else x


def _check_mode(mode, modes=MODES):
  if mode not in modes:
    raise ValueError(f"mode must be one of {modes}, got {mode!r}")


def _stats(a, t, log_scale, axis, mode):
  _check_mode(mode, ("gather", "chunked"))
  if mode == "gather" or axis is None:
    return _gather_stats(a, t, log_scale, axis)
  lse, aux = _ring_stats(a, t, _to_varying(log_scale, axis), axis)
  return lse, jax.tree.map(lax.stop_gradient, aux)


def _psum(x, axis):
  return x if axis is None else lax.psum(x, axis)


def _f32(*xs):
  # Logits reach ~100 and the log-sum-exp runs over the global batch: in float32 even
  # when the towers run in bfloat16 (the cotangents go back in the towers' dtype).
  return tuple(jnp.asarray(x).astype(jnp.float32) for x in xs)


def _axis_tuple(axis):
  if axis is None or isinstance(axis, tuple):
    return axis or None
  return (axis,)


# ---------------------------------------------------------------------------------------
# Symmetric InfoNCE.


def info_nce_reference(audio, text, logit_scale):
  """ClipLoss on full arrays: returns (loss, metrics)."""
  audio, text, logit_scale = _f32(audio, text, logit_scale)
  logits = jnp.exp(logit_scale) * audio @ text.T
  labels = jnp.arange(audio.shape[0])
  log_a = jax.nn.log_softmax(logits, axis=1)
  log_t = jax.nn.log_softmax(logits.T, axis=1)
  loss_a2t = -jnp.mean(log_a[labels, labels])
  loss_t2a = -jnp.mean(log_t[labels, labels])
  metrics = {"loss_a2t": loss_a2t, "loss_t2a": loss_t2a,
             "acc_a2t": jnp.mean(jnp.argmax(logits, axis=1) == labels),
             "acc_t2a": jnp.mean(jnp.argmax(logits, axis=0) == labels)}
  return 0.5 * (loss_a2t + loss_t2a), metrics


def info_nce_local(audio, text, logit_scale, axis_name, *, mode="gather"):
  """The per-device body of `info_nce` inside a shard_map over `axis_name` (a name, a
  tuple of names, or None). audio, text: the local [n, d] rows. Returns (loss, metrics),
  both already reduced over the global batch."""
  axis = _axis_tuple(axis_name)
  audio, text, logit_scale = _f32(audio, text, logit_scale)
  (lse_a, lse_t), (max_a, max_t, own_a, own_t) = _stats(audio, text, logit_scale, axis, mode)
  n_global = audio.shape[0] * (1 if axis is None else lax.axis_size(axis))
  pos = jnp.exp(logit_scale) * jnp.sum(audio * text, axis=-1)
  loss_a2t = _psum(jnp.sum(lse_a - pos), axis) / n_global
  loss_t2a = _psum(jnp.sum(lse_t - pos), axis) / n_global
  # A row is right when its positive reaches the row's maximum; both numbers come from
  # the same matmul block, so rounding cannot separate them.
  hit_a = jnp.diagonal(own_a) >= max_a
  hit_t = jnp.diagonal(own_t) >= max_t
  metrics = {"loss_a2t": loss_a2t, "loss_t2a": loss_t2a,
             "acc_a2t": _psum(jnp.sum(hit_a), axis) / n_global,
             "acc_t2a": _psum(jnp.sum(hit_t), axis) / n_global}
  return 0.5 * (loss_a2t + loss_t2a), metrics


def _lay_out(x, sharding):
  """Give x the layout shard_map's in_specs ask for, on either kind of mesh axis."""
  if not isinstance(x, jax.core.Tracer):
    return jax.device_put(x, sharding)
  explicit = {n for n, t in zip(sharding.mesh.axis_names, sharding.mesh.axis_types)
              if t == jax.sharding.AxisType.Explicit}
  # Explicit axes carry the layout in the type, which shard_map checks; Auto axes take
  # a constraint for GSPMD. (A model on an Explicit mesh may hand us, say, d split over
  # "tensor".)
  if explicit and explicit >= set(sharding.mesh.axis_names):
    return jax.sharding.reshard(x, sharding)
  return lax.with_sharding_constraint(x, sharding)


def _sharded(local_fn, mesh, batch_axes, audio, text, *scalars):
  """Runs local_fn(audio, text, *scalars, axis_name=...) under shard_map: the two towers
  split over the batch axes, the scalar parameters (scale, and bias for SigLIP)
  replicated."""
  axes = tuple(a for a in batch_axes if a in mesh.axis_names)
  p = math.prod(mesh.shape[a] for a in axes)
  n = audio.shape[0]
  if n % p:
    raise ValueError(f"batch size {n} is not divisible by the {p} devices of mesh axes "
                     f"{axes}; choose a global batch that is a multiple of {p}")
  spec = P(axes or None)
  fn = jax.shard_map(functools.partial(local_fn, axis_name=axes or None), mesh=mesh,
                     in_specs=(spec, spec) + (P(),) * len(scalars), out_specs=P())
  batch, replicated = NamedSharding(mesh, spec), NamedSharding(mesh, P())
  args = (_lay_out(audio, batch), _lay_out(text, batch),
          *(_lay_out(jnp.asarray(x, jnp.float32), replicated) for x in scalars))
  # Under an outer jit this inlines; called eagerly it compiles the shard_map once.
  return jax.jit(fn)(*args)


def info_nce(audio, text, logit_scale, *, mesh=None, batch_axes=("data", "fsdp"),
             mode="gather"):
  """Symmetric InfoNCE over the global batch (LAION-CLAP ClipLoss).

  audio, text: [N, d] embeddings, already L2-normalised; row i of each is a pair.
  logit_scale: scalar log of the logit multiplier (logits = exp(logit_scale) a @ t.T).
  mesh: None, or a Mesh whose `batch_axes` (those present) split the batch.
  mode: "unsharded" (full arrays, also what mesh=None does), "gather" or "chunked".
  Returns (loss, metrics): the scalar loss and {loss_a2t, loss_t2a, acc_a2t, acc_t2a}
  (directional losses and top-1 accuracies over the global batch; they cost nothing
  beside the loss).
  """
  _check_mode(mode)
  if mesh is None or mode == "unsharded":
    return info_nce_reference(audio, text, logit_scale)
  return _sharded(functools.partial(info_nce_local, mode=mode), mesh, batch_axes,
                  audio, text, logit_scale)


# ---------------------------------------------------------------------------------------
# CLSP stage 2: multi-positive InfoNCE.


def _check_text2(audio, text2):
  if text2.ndim != 3 or text2.shape[1] != 2 or text2.shape[0] != audio.shape[0]:
    raise ValueError(f"text2 must be [N, 2, d] with N = {audio.shape[0]} clips, "
                     f"got {text2.shape}")


def multi_positive_info_nce_reference(audio, text2, logit_scale, *, lam=0.5):
  """CLSP's multi-positive loss on full arrays: returns (loss, metrics)."""
  _check_text2(audio, text2)
  audio, text2, logit_scale = _f32(audio, text2, logit_scale)
  n = audio.shape[0]
  # Captions flattened clip-major: column 2i + c is caption c of clip i.
  logits = jnp.exp(logit_scale) * audio @ text2.reshape(2 * n, -1).T  # [N, 2N]
  clips = jnp.arange(n)
  target = jnp.zeros_like(logits).at[clips, 2 * clips].set(lam)
  target = target.at[clips, 2 * clips + 1].set(1.0 - lam)
  loss_a2t = -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits, axis=1), axis=1))
  log_t = jax.nn.log_softmax(logits.T, axis=1)  # [2N, N]
  owner = jnp.arange(2 * n) // 2
  loss_t2a = -jnp.mean(log_t[jnp.arange(2 * n), owner])
  metrics = {"loss_a2t": loss_a2t, "loss_t2a": loss_t2a,
             "acc_a2t": jnp.mean(jnp.argmax(logits, axis=1) // 2 == clips),
             "acc_t2a": jnp.mean(jnp.argmax(logits, axis=0) == owner)}
  return 0.5 * (loss_a2t + loss_t2a), metrics


def multi_positive_info_nce_local(audio, text2, logit_scale, axis_name, *, lam=0.5,
                                  mode="gather"):
  """The per-device body of `multi_positive_info_nce` (see `info_nce_local`)."""
  _check_text2(audio, text2)
  axis = _axis_tuple(axis_name)
  audio, text2, logit_scale = _f32(audio, text2, logit_scale)
  n, _, d = text2.shape
  text = text2.reshape(2 * n, d)
  (lse_a, lse_t), (max_a, max_t, own_a, own_t) = _stats(audio, text, logit_scale, axis, mode)
  n_global = n * (1 if axis is None else lax.axis_size(axis))
  pos = jnp.exp(logit_scale) * jnp.einsum("nd,ncd->nc", audio, text2)  # [n, 2]
  loss_a2t = _psum(jnp.sum(lse_a - lam * pos[:, 0] - (1.0 - lam) * pos[:, 1]), axis)
  loss_t2a = _psum(jnp.sum(lse_t - pos.reshape(-1)), axis)
  loss_a2t, loss_t2a = loss_a2t / n_global, loss_t2a / (2 * n_global)
  own_pos_a = jnp.diagonal(own_a.reshape(n, n, 2), axis1=0, axis2=1)  # [2, n]
  own_pos_t = jnp.diagonal(own_t.reshape(n, 2, n), axis1=0, axis2=2)  # [2, n]
  hit_a = own_pos_a.max(axis=0) >= max_a
  hit_t = own_pos_t.T.reshape(-1) >= max_t
  metrics = {"loss_a2t": loss_a2t, "loss_t2a": loss_t2a,
             "acc_a2t": _psum(jnp.sum(hit_a), axis) / n_global,
             "acc_t2a": _psum(jnp.sum(hit_t), axis) / (2 * n_global)}
  return 0.5 * (loss_a2t + loss_t2a), metrics


def multi_positive_info_nce(audio, text2, logit_scale, *, lam=0.5, mesh=None,
                            batch_axes=("data", "fsdp"), mode="gather"):
  """CLSP stage 2: N clips with two captions each (text2: [N, 2, d]), logits N x 2N.

  Audio->text: soft target `lam` on caption 1 and `1 - lam` on caption 2, against all 2N
  captions. Text->audio: each of the 2N captions one-hot on its clip. Loss = mean of the
  two cross-entropies (each averaged over its own rows: N and 2N). Modes, sharding and
  the returned (loss, metrics) as `info_nce`; an audio row counts as right when its
  argmax is either of its captions.
  """
  _check_mode(mode)
  if mesh is None or mode == "unsharded":
    return multi_positive_info_nce_reference(audio, text2, logit_scale, lam=lam)
  local = functools.partial(multi_positive_info_nce_local, lam=lam, mode=mode)
  return _sharded(local, mesh, batch_axes, audio, text2, logit_scale)


# ---------------------------------------------------------------------------------------
# Sigmoid loss (SigLIP): every pair is its own binary problem,
#   logits_ij = exp(logit_scale) a_i . t_j + logit_bias,  z_ij = +1 if i == j else -1,
#   loss = -(1 / N) sum_ij log sigmoid(z_ij logits_ij).
# The sum has no normaliser, so a device can score its n audio rows against any chunk of
# text columns on its own and only the partial sums are reduced; one direction covers
# every pair. Beside the sum, each device keeps (for the accuracies only, no gradient)
# its rows' maxima, the maxima of the columns it scores and the diagonal of its own
# block, where its positives live.


def _signed(x, offset):
  """z * x for a block x whose row i is paired with column i + offset."""
  n, m = x.shape
  rows = lax.broadcasted_iota(jnp.int32, (n, m), 0)
  cols = lax.broadcasted_iota(jnp.int32, (n, m), 1)
  return jnp.where(cols == rows + offset, x, -x)


def _sigmoid_gather(a, t, log_scale, bias, axis):
  if axis is None:
    t_all, r = t, 0
  else:
    t_all = lax.all_gather(t, axis, tiled=True)
    r = lax.axis_index(axis)
  n = a.shape[0]
  logits = jnp.exp(log_scale) * (a @ t_all.T) + bias  # [n, N]
  total = jnp.sum(jax.nn.log_sigmoid(_signed(logits, r * n)))
  logits = lax.stop_gradient(logits)
  # A text's column is scored on every device; the maxima over the local rows meet by
  # pmax (N numbers, not the audio tower), and each device keeps its own texts'.
  col_m = logits.max(axis=0)
  if axis is not None:
    col_m = lax.pmax(col_m, axis)
  own = lax.dynamic_slice_in_dim(logits, r * n, n, axis=1)
  aux = (logits.max(axis=1), lax.dynamic_slice_in_dim(col_m, r * n, n), jnp.diagonal(own))
  return total, aux


def _sigmoid_ring_fwd(a, t, log_scale, bias, axis):
  perm, p = _ring_perm(axis)
  scale = jnp.exp(log_scale)
  # The own chunk first: the only block with positives (on its diagonal).
  own = scale * (a @ t.T) + bias
  total = jnp.sum(jax.nn.log_sigmoid(_signed(own, 0)))

  def step(_, carry):
    # The text chunk travels with its column maxima; the sum and row maxima stay put.
    t_c, col_m, row_m, total = carry
    t_c, col_m = lax.ppermute((t_c, col_m), axis, perm)
    b = scale * (a @ t_c.T) + bias
    col_m, row_m = jnp.maximum(col_m, b.max(axis=0)), jnp.maximum(row_m, b.max(axis=1))
    return t_c, col_m, row_m, total + jnp.sum(jax.nn.log_sigmoid(-b))

  _, col_m, row_m, total = lax.fori_loop(
      1, p, step, (t, own.max(axis=0), own.max(axis=1), total))
  col_m = lax.ppermute(col_m, axis, perm)  # the last hop home, as in `_ring_fwd`
  # Residuals are the inputs only: the backward pass rebuilds every block.
  return (total, (row_m, col_m, jnp.diagonal(own))), (a, t, log_scale, bias)


def _sigmoid_ring_bwd(axis, res, cts):
  a, t, log_scale, bias = res
  g, _ = cts  # the metric outputs carry no gradient
  perm, p = _ring_perm(axis)
  scale = jnp.exp(log_scale)

  def block(t_c, own):
    raw = a @ t_c.T
    x = scale * raw + bias
    # d log sigmoid(z x) / dx = z sigmoid(-z x); only the own block has z = +1 entries.
    gb = g * (_signed(jax.nn.sigmoid(-_signed(x, 0)), 0) if own else -jax.nn.sigmoid(x))
    # logits = exp(log_scale) raw + bias: d/d log_scale = scale * sum(gb raw) (the scale
    # applied once at the end), d/d bias = sum(gb).
    return gb, jnp.sum(gb * raw), jnp.sum(gb)

  gb, ds, db = block(t, True)
  init = (t, gb.T @ a, gb @ t, ds, db)

  def step(_, carry):
    # The chunk travels with its accumulating gradient, as in `_ring_bwd`.
    t_c, dt_c, da, ds, db = carry
    t_c, dt_c = lax.ppermute((t_c, dt_c), axis, perm)
    gb, ds_c, db_c = block(t_c, False)
    return t_c, dt_c + gb.T @ a, da + gb @ t_c, ds + ds_c, db + db_c

  _, dt, da, ds, db = lax.fori_loop(1, p, step, init)
  dt = lax.ppermute(dt, axis, perm)
  return scale * da, scale * dt, scale * ds, db


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _sigmoid_ring(a, t, log_scale, bias, axis):
  # Autodiff through the fori_loop would keep every visiting chunk (p x n x d) for the
  # backward pass; the custom rule keeps the inputs and runs the ring again, so memory
  # stays O(n * n + n * d) whatever the number of devices.
  return _sigmoid_ring_fwd(a, t, log_scale, bias, axis)[0]


_sigmoid_ring.defvjp(_sigmoid_ring_fwd, _sigmoid_ring_bwd)


def _sigmoid_stats(a, t, log_scale, bias, axis, mode):
  _check_mode(mode, ("gather", "chunked"))
  if mode == "gather" or axis is None:
    return _sigmoid_gather(a, t, log_scale, bias, axis)
  total, aux = _sigmoid_ring(a, t, _to_varying(log_scale, axis), _to_varying(bias, axis),
                             axis)
  return total, jax.tree.map(lax.stop_gradient, aux)


def sigmoid_loss_reference(audio, text, logit_scale, logit_bias):
  """SigLIP's loss on full arrays: returns (loss, metrics)."""
  audio, text, logit_scale, logit_bias = _f32(audio, text, logit_scale, logit_bias)
  n = audio.shape[0]
  logits = jnp.exp(logit_scale) * audio @ text.T + logit_bias
  log_p = jax.nn.log_sigmoid(_signed(logits, 0))
  loss = -jnp.sum(log_p) / n
  loss_pos = -jnp.sum(jnp.diagonal(log_p)) / n
  labels = jnp.arange(n)
  metrics = {"loss_pos": loss_pos, "loss_neg": loss - loss_pos,
             "acc_a2t": jnp.mean(jnp.argmax(logits, axis=1) == labels),
             "acc_t2a": jnp.mean(jnp.argmax(logits, axis=0) == labels)}
  return loss, metrics


def sigmoid_loss_local(audio, text, logit_scale, logit_bias, axis_name, *, mode="gather"):
  """The per-device body of `sigmoid_loss` inside a shard_map over `axis_name` (a name, a
  tuple of names, or None). audio, text: the local [n, d] rows. Returns (loss, metrics),
  both already reduced over the global batch."""
  axis = _axis_tuple(axis_name)
  audio, text, logit_scale, logit_bias = _f32(audio, text, logit_scale, logit_bias)
  total, (max_a, max_t, pos) = _sigmoid_stats(audio, text, logit_scale, logit_bias, axis,
                                              mode)
  n_global = audio.shape[0] * (1 if axis is None else lax.axis_size(axis))
  loss = -_psum(total, axis) / n_global
  loss_pos = -_psum(jnp.sum(jax.nn.log_sigmoid(pos)), axis) / n_global
  # As in `info_nce_local`: the positive and the maxima come from the same blocks.
  metrics = {"loss_pos": loss_pos, "loss_neg": loss - loss_pos,
             "acc_a2t": _psum(jnp.sum(pos >= max_a), axis) / n_global,
             "acc_t2a": _psum(jnp.sum(pos >= max_t), axis) / n_global}
  return loss, metrics


def sigmoid_loss(audio, text, logit_scale, logit_bias, *, mesh=None,
                 batch_axes=("data", "fsdp"), mode="gather"):
  """SigLIP's pairwise sigmoid loss over the global batch (Zhai et al. 2023).

  audio, text: [N, d] embeddings, already L2-normalised; row i of each is a pair.
  logit_scale: scalar log of the logit multiplier; logit_bias: scalar added to every
  logit (SigLIP initialises them to log 10 and -10). Every one of the N x N pairs is a
  binary problem, positive on the diagonal; the loss is the summed negative
  log-likelihood divided by N (big_vision's normalisation), in float32.
  mesh, batch_axes, mode: as `info_nce`.
  Returns (loss, metrics): the scalar loss and {loss_pos, loss_neg, acc_a2t, acc_t2a}
  (the loss's positive and negative parts, which add up to it, and top-1 accuracies
  over the global batch).
  """
  _check_mode(mode)
  if mesh is None or mode == "unsharded":
    return sigmoid_loss_reference(audio, text, logit_scale, logit_bias)
  return _sharded(functools.partial(sigmoid_loss_local, mode=mode), mesh, batch_axes,
                  audio, text, logit_scale, logit_bias)


# ---------------------------------------------------------------------------------------
# Reconstruction, alignment, temperature.


def mae_loss(pred, target, mask, *, norm_pix=False):
  """(Audio)MAE reconstruction loss: per-patch MSE averaged over masked patches only.

  pred, target: [..., L, D] patches; mask: [..., L], 1 where the patch was removed (the
  encoder never saw it) and 0 where it was kept. norm_pix: normalise each target patch by
  its own mean and (unbiased, as torch's `var` in the MAE code) variance, + 1e-6.
  A mask with no masked patch gives 0 rather than 0 / 0.
  """
  if norm_pix:
    mean = target.mean(axis=-1, keepdims=True)
    var = target.var(axis=-1, keepdims=True, ddof=1)
    target = (target - mean) / jnp.sqrt(var + 1e-6)
  per_patch = jnp.mean((pred - target) ** 2, axis=-1)
  mask = mask.astype(per_patch.dtype)
  return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def cka(x, y, *, eps=1e-12):
  """Linear CKA between two batches of embeddings, x: [n, dx], y: [n, dy].

  HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K = x x^T, L = y y^T centred (H K H).
  Centring the features is the same as centring the Gram matrix, and HSIC's 1/(n-1)^2
  cancels. Each batch is first scaled to unit Frobenius norm, which CKA ignores, so the
  sums below stay in float32 range whatever the embedding scale. `eps` guards a batch
  with zero variance (all rows equal): its CKA is 0 and its gradient finite, instead of
  0 / 0; it shifts the CKA of a non-constant batch by at most ~eps * n^2.
  """
  def gram(z):
    z = z - z.mean(axis=0, keepdims=True)
    z = z * lax.rsqrt(jnp.sum(z * z) + eps)
    return z @ z.T

  k, l = gram(x.astype(jnp.float32)), gram(y.astype(jnp.float32))
  return jnp.sum(k * l) / jnp.sqrt(jnp.sum(k * k) * jnp.sum(l * l) + eps)


def cka_loss(x, y, *, eps=1e-12):
  """AcuLa's L_align = 1 - linear CKA(x, y) (see `cka`)."""
  return 1.0 - cka(x, y, eps=eps)


def clamp_logit_scale(s, max_value=math.log(100.0)):
  """LAION's clamp of the log logit multiplier to [0, ln 100] (multiplier in [1, 100]);
  apply it to the parameter after each optimiser update."""
  return jnp.clip(s, 0.0, max_value)

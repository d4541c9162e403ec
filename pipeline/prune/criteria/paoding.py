"""``paoding``: the data-free PAODING criterion (see :class:`Paoding`).

Each criterion's :meth:`select` returns the channels to remove (current positions within
the group) and, for PAODING's pair-wise mode, the merges to apply first. Lower score =
removed first.

- ``paoding`` (data-free, after PAODING, Meng et al.):
  * Conv groups (and any group that is not a plain Dense group): channels ranked by the
    L1 *scale* of their filters. A BatchNormalization that directly follows the producer
    rescales each channel by ``|gamma| / sqrt(var + eps)``, so the scale is folded in: the
    L1 of the raw filter alone says nothing about the channel's output once BN
    renormalises it.
  * Dense groups: pair-wise. See :class:`Paoding` for the exact rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeprune.pipeline.prune.interval import (
    LIPSCHITZ,
    MONOTONE_ACTIVATIONS,
    activation_name,
    bn_affine,
)
from edgeprune.pipeline.prune.criteria.base import Context, Importance, Selection, _channel_l1
from edgeprune.pipeline.prune.graph import DependencyGraph, Group

HOMOGENEOUS = {"relu", "linear", None, "leaky_relu"}  # f(l * z) = l * f(z) for l >= 0


@dataclass
class DenseChain:
    """A Dense producer whose output reaches Dense consumers through BatchNorm (before the
    activation), one monotone activation and identity layers only."""

    producer: str
    affine: list[str]  # BatchNormalization layers before the activation
    activation: str | None
    consumers: list[str]  # Dense layers reading the group
    end: str  # last layer of the chain (its output is what the consumers read)


def dense_chain(graph: DependencyGraph, producer: str) -> DenseChain | None:
    info = graph.layers[producer]
    if info.cls != "Dense":
        return None
    act = activation_name(info.layer)
    affine: list[str] = []
    name = producer
    while True:
        nxt = graph.consumers.get(name, [])
        if len(nxt) != 1:
            break
        cand = graph.layers[nxt[0]]
        if cand.cls == "BatchNormalization" and act in ("linear", None):
            affine.append(cand.name)
        elif cand.cls in ("Activation", "ReLU", "LeakyReLU", "ELU") and act in ("linear", None):
            act = activation_name(cand.layer)
        elif graph.is_identity(cand.name):
            pass
        else:
            break
        name = cand.name
    if act not in MONOTONE_ACTIVATIONS:
        return None
    consumers = graph.consumers.get(name, [])
    if not consumers or any(graph.layers[c].cls != "Dense" for c in consumers):
        return None
    return DenseChain(producer, affine, act, consumers, name)


class Paoding(Importance):
    """PAODING (data-free) importance.

    Dense groups are pruned pair-wise. Let neuron ``j`` (to be removed) and its partner ``i``
    (kept) have effective pre-activations ``z = s * (w . x + b) + t`` (BatchNorm folded) and
    activations ``h = f(z)``; let ``a_j`` be j's OUTGOING weights (the consumers' input rows
    for j). Removing j and merging its outgoing weights into i (``a_i += lam * a_j``)
    changes the consumers' pre-activations by exactly

        delta = a_j * (lam * h_i - h_j)

    so it is the REMOVED neuron's outgoing weights that carry the impact, multiplied by how
    far the partner's (scaled) activation is from the removed one's. (The published code
    mixes up i and j between the saliency and the impact; the formula above is the exact
    effect of the merge it applies.) For positively homogeneous activations (ReLU, linear,
    leaky ReLU) ``lam * f(z_i) = f(lam * z_i)``, so ``lam`` is chosen as the least-squares
    scale of i's incoming weights onto j's (``lam >= 0``); the classical merge is ``lam =
    1``, which is what is used for other activations. ``lam = 0`` is plain removal and is
    always a candidate.

    1. Candidates: for each j, its three best partners by saliency
       ``||v_j - lam v_i|| * ||a_j||`` (v = incoming weights with the bias), plus removal.
    2. Impact: ``z_j - lam z_i`` is bounded over the input box by interval arithmetic from
       the bounds of the layer's input (propagated from the model's input range, no data);
       for a monotone activation with Lipschitz constant L, ``lam h_i - h_j`` lies in
       ``[-L max(hi, 0), -L min(lo, 0)]``, intersected with the bounds from the neurons'
       own activation intervals. ``delta`` is then propagated as an interval through the
       following Dense/BatchNorm/activation layers to the model output (logits, before a
       final softmax).
    3. Score = ``alpha * L1(impact) / max L1 + beta * (1 - H(impact))``, with H the Shannon
       entropy of the normalised impact magnitudes over the outputs (divided by log n, so
       in [0, 1]). The entropy enters as ``1 - H``: an impact spread evenly over all
       outputs shifts every logit alike and leaves the arg-max, while one concentrated on
       a few outputs can flip it (measured in bench/prune_quality.py: with ``+ H`` the MLP
       pruned to 113/51 kept 0.751, with ``1 - H`` 0.783).
    4. Pairs are taken greedily by score, each neuron in at most one merge per step.
    """

    name = "paoding"

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, candidates_per_neuron: int = 3,
                 similarity: str = "weights"):
        self.alpha, self.beta, self.k = alpha, beta, candidates_per_neuron
        self.similarity = similarity
        self.chunk = 1024

    def begin_step(self, ctx: Context) -> None:
        from edgeprune.pipeline.prune.bounds import interval_bounds

        ctx.bounds = interval_bounds(ctx.graph, ctx.state, ctx.input_range)

    def scores(self, ctx, group):
        return _channel_l1(ctx, group, fold_bn=True)

    def select(self, ctx: Context, group: Group, n_remove: int) -> Selection:
        chain = dense_chain(ctx.graph, group.producers[0]) if len(group.producers) == 1 else None
        members_ok = chain is not None and all(
            m in (chain.producer, *chain.affine, *chain.consumers) for m in group.members
        )
        x_bounds = None
        if members_ok:
            x_bounds = ctx.bounds.get(ctx.graph.layers[chain.producer].inputs[0]) if ctx.bounds else None
            if x_bounds is not None and np.ndim(x_bounds[0]) != 2:
                # a Dense applied to a sequence (per position): the pair-wise impact is derived for one
                # input vector (it crashed on a Dense over (T, C), found by the fuzzer): scale ranking
                x_bounds = None
        if not members_ok or x_bounds is None:
            sel = super().select(ctx, group, n_remove)
            sel.method = "paoding-scale"
            return sel
        return self._pairwise(ctx, group, chain, x_bounds, n_remove)

    # ------------------------------------------------------------------ pair-wise
    def _pairwise(self, ctx: Context, group: Group, chain: DenseChain, x_bounds, n_remove: int) -> Selection:
        state, graph = ctx.state, ctx.graph
        ws = state.weights[chain.producer]
        pcfg = graph.layers[chain.producer].layer.get_config()
        kernel = ws[0].astype(np.float64)
        bias = ws[1].astype(np.float64) if pcfg.get("use_bias", True) else np.zeros(kernel.shape[1])
        s = np.ones(kernel.shape[1])
        t = np.zeros(kernel.shape[1])
        for bn in chain.affine:
            bs, bt = bn_affine(state.weights[bn], graph.layers[bn].layer.get_config())
            s, t = s * bs, t * bs + bt
        w_eff = kernel * s  # (in, n)
        b_eff = bias * s + t
        n = w_eff.shape[1]
        act = chain.activation
        homogeneous = act in HOMOGENEOUS

        # outgoing weights a_j: every consumer's input rows for channel j, all blocks
        outs, a_cat = _outgoing(state, group, n)
        consumer = chain.consumers[0] if len(chain.consumers) == 1 else None
        a_norm = np.linalg.norm(a_cat, axis=1)

        # input box of the producer (interval bounds from the model's input range)
        lo_x, hi_x = (b.reshape(-1).astype(np.float64) for b in x_bounds)
        c_x, r_x = (lo_x + hi_x) / 2, (hi_x - lo_x) / 2

        # 1. saliency and best partners. The similarity of two neurons is measured on
        # their pre-activations over the input box (uniform on the box, no data):
        # E[z_i z_j] = m_i m_j + sum_k w_ki w_kj r_k^2 / 3, with m = centre pre-activation.
        if self.similarity == "moment":
            m_c = c_x @ w_eff + b_eff
            gram = np.outer(m_c, m_c) + (w_eff * (r_x ** 2 / 3.0)[:, None]).T @ w_eff
        else:  # plain weight space, the bias as one more weight
            v = np.vstack([w_eff, b_eff[None, :]])
            gram = v.T @ v
        sq = np.diag(gram).copy()
        if homogeneous:
            lam = np.clip(gram / np.maximum(sq[:, None], 1e-12), 0.0, None)  # lam[i, j]: z_j ~ lam z_i
        else:
            lam = np.ones((n, n))
        resid2 = sq[None, :] - 2 * lam * gram + lam ** 2 * sq[:, None]
        sal = np.sqrt(np.maximum(resid2, 0.0)) * a_norm[None, :]
        np.fill_diagonal(sal, np.inf)
        k = min(self.k, n - 1)
        part = np.argpartition(sal, k - 1, axis=0)[:k] if k > 0 else np.zeros((0, n), int)  # (k, n) partners i for each j
        js = np.concatenate([np.repeat(np.arange(n)[None, :], k, 0).ravel(), np.arange(n)])
        is_ = np.concatenate([part.ravel(), np.full(n, -1)])
        lams = np.concatenate([lam[part.ravel(), np.tile(np.arange(n), k)], np.zeros(n)])

        # 2. interval of lam*h_i - h_j over the input box
        d_lo, d_hi = _pair_interval(act, w_eff, b_eff, c_x, r_x, js, is_, lams, self.chunk)

        # 3. impact on the consumer's pre-activation, then (single consumer) to the outputs
        single = consumer is not None and all(l == consumer for l, _ in outs)
        l1 = np.empty(js.size)
        ent = np.empty(js.size)
        for a in range(0, js.size, self.chunk):
            b = min(js.size, a + self.chunk)
            a_rows = a_cat[js[a:b]]  # (chunk, m)
            lo_, hi_ = a_rows * d_lo[a:b, None], a_rows * d_hi[a:b, None]
            e_lo, e_hi = np.minimum(lo_, hi_), np.maximum(lo_, hi_)
            if single:
                e_lo, e_hi = _propagate(graph, state, consumer, e_lo, e_hi)
            mag = np.maximum(np.abs(e_lo), np.abs(e_hi))
            l1[a:b], ent[a:b] = _l1_entropy(mag)
        score = self.alpha * l1 / max(float(l1.max()), 1e-30) + self.beta * (1.0 - ent)

        # an impact spread evenly over the outputs (entropy 1) shifts every logit alike and
        # leaves the prediction; a concentrated one (entropy 0) can flip it: hence 1 - H

        # 4. greedy selection
        remove, merges = _greedy_select(score, js, is_, lams, a_norm, n_remove)
        return Selection(remove=sorted(remove), merges=merges, method="paoding-pairwise")


def _outgoing(state, group: Group, n: int):
    """The (consumer layer, row offset) of each block of the group's Dense consumers, and their
    kernel rows for the group's ``n`` channels side by side: (n, total outputs), float64."""
    outs = []
    for ref in group.refs:
        if ref.role == "consumer":  # Dense consumers: kernel rows (axis 0)
            for start in state.block_slices(ref, group.id):
                outs.append((ref.layer, start))
    a_parts = [state.weights[layer][0][start:start + n] for layer, start in outs]
    return outs, np.concatenate(a_parts, axis=1).astype(np.float64)


def _pair_interval(act, w_eff, b_eff, c_x, r_x, js, is_, lams, chunk: int):
    """The interval [d_lo, d_hi] of lam*h_i - h_j over the input box for every (j, partner i) pair
    (i = -1: j alone), from the pre-activation bound and from each neuron's own activation interval."""
    lip = LIPSCHITZ.get(act, 1.0)
    homogeneous = act in HOMOGENEOUS
    z_c = c_x @ w_eff + b_eff
    z_r = r_x @ np.abs(w_eff)
    from edgeprune.pipeline.prune.interval import apply_activation

    h_lo = apply_activation(act, z_c - z_r)
    h_hi = apply_activation(act, z_c + z_r)
    pair = is_ >= 0
    ii = np.where(pair, is_, 0)
    lam_p = lams * pair
    # centre of z_j - lam z_i is linear in the centre pre-activations; its radius needs
    # |w_j - lam w_i|, computed in chunks of candidates to bound memory
    dc = z_c[js] - lam_p * z_c[ii]
    dr = np.empty(js.size)
    w32 = w_eff.astype(np.float32)
    r32 = r_x.astype(np.float32)
    for a in range(0, js.size, chunk):
        b = min(js.size, a + chunk)
        dw = w32[:, js[a:b]] - lam_p[a:b].astype(np.float32) * w32[:, ii[a:b]]
        dr[a:b] = r32 @ np.abs(dw)
    d_lo = -lip * np.maximum(dc + dr, 0.0)  # lam h_i - h_j >= -L max(z_j - lam z_i, 0)
    d_hi = -lip * np.minimum(dc - dr, 0.0)
    # direct bounds from each neuron's own activation interval
    direct_lo = np.where(pair, lams * h_lo[ii], 0.0) - h_hi[js]
    direct_hi = np.where(pair, lams * h_hi[ii], 0.0) - h_lo[js]
    if homogeneous:
        d_lo, d_hi = np.maximum(d_lo, direct_lo), np.minimum(d_hi, direct_hi)
    else:
        d_lo, d_hi = direct_lo, direct_hi
    d_hi = np.maximum(d_hi, d_lo)
    return d_lo, d_hi


def _greedy_select(score, js, is_, lams, a_norm, n_remove: int) -> tuple[list, list]:
    """Lowest score first, each neuron removed or merged into at most once; then plain removals
    when the disjoint pairs run out. Returns (removed channels, merges (j, i, lam))."""
    order = np.argsort(score, kind="stable")
    removed: set[int] = set()
    touched: set[int] = set()
    remove, merges = [], []
    for c in order:
        if len(remove) >= n_remove:
            break
        j, i = int(js[c]), int(is_[c])
        if j in removed or j in touched:
            continue
        if i >= 0 and (i in removed or i in touched):
            continue
        removed.add(j)
        remove.append(j)
        if i >= 0:
            touched.add(i)
            merges.append((j, i, float(lams[c])))
    if len(remove) < n_remove:
        # a step removing more than about half the group runs out of disjoint pairs:
        # remove further neurons plainly, untouched ones first (lowest outgoing norm),
        # then partners that received a merge (their merge is then void)
        by_norm = [int(j) for j in np.argsort(a_norm, kind="stable") if int(j) not in removed]
        rest = [j for j in by_norm if j not in touched] + [j for j in by_norm if j in touched]
        extra = rest[: n_remove - len(remove)]
        remove += extra
        void = set(extra)
        merges = [m for m in merges if m[1] not in void]
    return remove, merges


def _l1_entropy(mag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L1 norm and normalised Shannon entropy (in [0, 1]) of each row of impact magnitudes."""
    l1 = mag.sum(1)
    m_out = mag.shape[1]
    p = mag / np.maximum(l1[:, None], 1e-30)
    ent = -(p * np.log(np.where(p > 0, p, 1.0))).sum(1) / (np.log(m_out) if m_out > 1 else 1.0)
    return l1, np.where(l1 > 0, ent, 1.0)  # no impact at all: as harmless as a spread one (1 - H = 0)


def _propagate(graph: DependencyGraph, state, start: str, e_lo: np.ndarray, e_hi: np.ndarray):
    """Propagate an interval perturbation of ``start``'s pre-activation to the model output
    along a chain of Dense/BatchNorm/activation/identity layers; stop where the chain
    branches or meets another kind of layer (the impact is scored there)."""
    name = start
    info = graph.layers[name]
    act = activation_name(info.layer)
    output_layers = {n for n, _ in graph.output_refs}
    while True:
        # post-processing of `name` (its activation), unless it is a model output with softmax
        if act not in ("linear", None):
            if name in output_layers and act in ("softmax", "log_softmax"):
                return e_lo, e_hi
            if act not in LIPSCHITZ:
                return e_lo, e_hi
            lip = LIPSCHITZ[act]
            e_lo, e_hi = lip * np.minimum(e_lo, 0.0), lip * np.maximum(e_hi, 0.0)
        if name in output_layers:
            return e_lo, e_hi
        nxt = graph.consumers.get(name, [])
        if len(nxt) != 1:
            return e_lo, e_hi
        name = nxt[0]
        info = graph.layers[name]
        if info.cls == "BatchNormalization":
            s, _ = bn_affine(state.weights[name], info.layer.get_config())
            a, b = e_lo * s, e_hi * s
            e_lo, e_hi = np.minimum(a, b), np.maximum(a, b)
            act = None
        elif info.cls in ("Activation", "ReLU", "LeakyReLU", "ELU"):
            act = activation_name(info.layer)
        elif graph.is_identity(name):
            act = None
        elif info.cls == "Dense":
            w = state.weights[name][0]
            c, r = (e_lo + e_hi) / 2, (e_hi - e_lo) / 2
            c2, r2 = c @ w, r @ np.abs(w)
            e_lo, e_hi = c2 - r2, c2 + r2
            act = activation_name(info.layer)
        else:
            return e_lo, e_hi

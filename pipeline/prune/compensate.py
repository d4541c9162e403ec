"""Compensation: after channels are removed, refit their consumers by ridge least squares.

For every layer that reads a pruned group through a consumer weight and whose handler is
``refittable`` (Dense, Conv1D/Conv2D), in the model's topological order, the layer's
kernel and bias are refitted so that its pre-activation output on the calibration samples,
computed from the ALREADY-PRUNED (and already-refitted) model's inputs, matches what the
ORIGINAL model's layer computes from the original inputs (restricted to the output channels
that are kept). The fit is ridge regression pulled toward the current (pruned) weights:

    W = argmin ||[X 1] W - Y||^2 + lam ||W - W0||^2,   lam = ridge * trace(X'X) / d

with the bias unpenalised. PAODING's merges are applied first (they are exact); the refit
starts from the merged weights. The refitted weights are recorded in the plan
(``Plan.refits``), so ``Plan.apply`` on the original model reproduces the model exactly.
The calibration samples are the run's held-out calibration split, never the evaluation data.
"""
from __future__ import annotations

import time

import numpy as np

from edgeprune.pipeline.prune.calib import layer_inputs, layer_inputs_from, runs_on

DEFAULT_RIDGE = 1e-2
COMPENSATION_BUDGET_BYTES = 512 * 2**20  # one layer's inputs + patches on the refit samples
MIN_SAMPLES = 16
MAX_ROWS = 8192  # Conv: patch rows used for the fit (a seeded subset of samples x positions)


def _conv2d_geometry(x_shape: tuple, cfg: dict, kernel_shape: tuple):
    """(kernel taps, strides, dilations, output height/width, top/left padding) of the 2D view
    (Conv1D as height 1) of a Conv on inputs of ``x_shape``, as ``tf.image.extract_patches``
    lays its patches out (SAME: the extra padding row/column at the bottom/right)."""
    if len(x_shape) == 3:  # Conv1D -> 2D with height 1
        h, w = 1, int(x_shape[1])
        ks = (1, int(kernel_shape[0]))
        st = (1, int(np.ravel(cfg.get("strides", 1))[0]))
        dl = (1, int(np.ravel(cfg.get("dilation_rate", 1))[0]))
    else:
        h, w = int(x_shape[1]), int(x_shape[2])
        ks = tuple(int(k) for k in kernel_shape[:2])
        st = tuple(int(s) for s in cfg.get("strides", (1, 1)))
        dl = tuple(int(d) for d in cfg.get("dilation_rate", (1, 1)))
    same = cfg.get("padding", "valid").upper() == "SAME"
    out, pad = [], []
    for size, k, s, d in zip((h, w), ks, st, dl):
        eff = (k - 1) * d + 1
        o = -(-size // s) if same else max(0, (size - eff) // s + 1)
        out.append(o)
        pad.append(max((o - 1) * s + eff - size, 0) // 2 if same else 0)
    return ks, st, dl, tuple(out), tuple(pad)


def patch_count(x_shape: tuple, cfg: dict, kernel_shape: tuple) -> int:
    """How many im2col rows (samples x output positions) :func:`_patches` gives."""
    _, _, _, (oh, ow), _ = _conv2d_geometry(tuple(x_shape), cfg, kernel_shape)
    return int(x_shape[0]) * oh * ow


def _patches(x: np.ndarray, cfg: dict, kernel_shape: tuple, rows: np.ndarray | None = None) -> np.ndarray:
    """im2col: (rows, kh*kw*C) in the kernel's (kh, kw, C) order, for Conv1D/Conv2D; only the
    rows ``rows`` (indices into samples x output positions, row-major; None: all). Exactly the
    rows of ``tf.image.extract_patches`` (the values are copied, zeros in the padding), gathered
    in numpy so that a seeded subset never materialises every patch of every sample."""
    ks, st, dl, (oh, ow), (pt, pl) = _conv2d_geometry(x.shape, cfg, kernel_shape)
    if x.ndim == 3:
        x = x[:, None]
    if rows is None:
        rows = np.arange(x.shape[0] * oh * ow)
    rows = np.asarray(rows, dtype=np.int64)
    n, rem = np.divmod(rows, oh * ow)
    oy, ox = np.divmod(rem, ow)
    h, w = x.shape[1], x.shape[2]
    out = np.zeros((len(rows), ks[0], ks[1], x.shape[-1]), dtype=x.dtype)
    for i in range(ks[0]):
        yy = oy * st[0] + i * dl[0] - pt
        for j in range(ks[1]):
            xx = ox * st[1] + j * dl[1] - pl
            ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            out[ok, i, j] = x[n[ok], yy[ok], xx[ok]]
    return out.reshape(len(rows), ks[0] * ks[1] * x.shape[-1])


def refittable(graph, layer: str) -> bool:
    """Whether ``layer`` can be refitted: its handler's ``refittable`` (Dense, Conv1D/Conv2D)
    and its config (not a causal or grouped convolution)."""
    return graph.can_refit(layer)


def single_thread_blas():
    """NumPy's BLAS on one thread while fitting: the fits are small matrices, and on a shared
    2-core machine OpenBLAS' spinning worker threads made them ~10x slower (measured in
    bench/results/fidelity_speed.md)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


class Compensator:
    """Refits the consumers of pruned groups of one model on fixed calibration samples."""

    def __init__(self, graph, calibration: np.ndarray, ridge: float = DEFAULT_RIDGE):
        self.graph = graph
        n = min(len(calibration), self.max_samples(graph))  # memory flat in the data (issue 17)
        # a copy: a view would keep the whole array it was cut from (shifted copies of every sample)
        self.x = np.array(calibration[:n], dtype=np.float32)
        self.ridge = float(ridge)
        self._targets: dict[str, tuple] = {}
        self._prefetched = False  # the targets of every consumer computed in one pass (_prefetch_targets)
        self.seconds = 0.0
        self._first = None  # (layer, fingerprint of everything in front of it, its input): reused by the next refit

    @staticmethod
    def max_samples(graph, budget_bytes: int = COMPENSATION_BUDGET_BYTES) -> int:
        """Calibration samples a refit may hold: one layer's input on every sample, and its im2col
        patches (kh*kw times that for a Conv), within ``budget_bytes`` for the largest layer.
        Small models keep all of them; an ImageNet-size model a few dozen."""
        per_sample = 1
        for name, info in graph.layers.items():
            h = graph.handler(name)
            if h is None or not h.refittable:
                continue
            try:
                shape = tuple(info.layer.input.shape[1:])
                kernel = tuple(info.layer.get_weights()[0].shape)
            except (AttributeError, ValueError, IndexError):
                continue
            size = int(np.prod([int(d or 1) for d in shape])) * 4
            taps = int(np.prod(kernel[:-2])) if info.cls != "Dense" else 1
            per_sample = max(per_sample, size * (1 + taps))
        return max(MIN_SAMPLES, int(budget_bytes) // per_sample)

    def _original_input(self, name: str):
        """The ORIGINAL model's input of layer ``name`` on the samples, or None once its fit target is
        cached (only the target is kept: one layer's inputs at a time, issue 17)."""
        return None if name in self._targets else layer_inputs(self.graph.model, [name], self.x)[name]

    def layers_to_refit(self, state) -> list[str]:
        from edgeprune.pipeline.prune.branches import removed_layers, touched_consumers

        g = self.graph
        pruned = {gid for gid, grp in g.groups.items() if state.sizes[gid] < grp.size}
        names = {n for n in touched_consumers(state) if refittable(g, n)}  # behind a removed branch
        for gid in pruned:
            for ref in g.groups[gid].refs:
                if ref.role == "consumer" and refittable(g, ref.layer):
                    names.add(ref.layer)
        names -= removed_layers(state)
        return [n for n in g.order if n in names]

    def fit_layer(self, name: str, state, x_p: np.ndarray) -> list[np.ndarray]:
        """The ridge refit of layer ``name`` at ``state``'s widths from its input ``x_p`` on the
        calibration samples (``[kernel, bias]``; ``state`` is not changed)."""
        if name not in self._targets and not self._prefetched:
            self._prefetch_targets()
        with single_thread_blas():
            return self._fit(name, state, x_p, self._original_input(name))

    def _prefetch_targets(self) -> None:
        """Every refittable consumer's fit target in ONE layer-wise pass of the original, on a
        residual network (whose layers' inputs do not follow from one another's): the greedy's
        trial refits ask for them one layer at a time (MobileNetV2-224: 25 passes of the original
        in the first round, 22 s of a 118 s step). Only the targets are kept."""
        from edgeprune.pipeline.prune.calib import consumer_layers
        from edgeprune.pipeline.prune.layerwise import run_layerwise

        self._prefetched = True
        g = self.graph
        names = [n for n in consumer_layers(g) if refittable(g, n) and n not in self._targets]
        if names and not runs_on(g.model, names):
            with single_thread_blas():
                run_layerwise(g.model, self.x, {n: self._target_visitor(n) for n in names})

    def refit(self, state, build) -> list[str]:
        """Refit every consumer of a pruned group of ``state`` in place (topological order);
        ``build()`` gives the Keras model of the current state. Returns the refitted layers."""
        with single_thread_blas():
            return self._refit(state, build)

    def _refit(self, state, build) -> list[str]:
        t0 = time.perf_counter()
        names = self.layers_to_refit(state)
        if not names:
            return []
        model = build()
        refitted = getattr(state, "refitted", None)
        if refitted is None:
            refitted = state.refitted = set()
        # a residual network: one layer-wise pass (a chain runs each input on from the last one's)
        if not runs_on(model, names) and self._refit_layerwise(state, names, model, refitted):
            self.seconds += time.perf_counter() - t0
            return names
        prev = None  # (layer, its input): the next layer's input is run on from it when it can be
        for name in names:  # one layer's inputs at a time; the original's only until its target is cached
            x_p = layer_inputs_from(model, prev[0], prev[1], name) if prev is not None else None
            prev = None
            if x_p is None:
                key = self._upstream_key(state, name, model)
                if self._first is not None and self._first[:2] == (name, key):
                    x_p = self._first[2]  # nothing in front of it changed since the last refit
                else:
                    self._first = None
                    x_p = layer_inputs(model, [name], self.x)[name]
                    if x_p.nbytes <= COMPENSATION_BUDGET_BYTES // 4:
                        self._first = (name, key, x_p)
            x_o = self._original_input(name)
            new = self._fit(name, state, x_p, x_o)
            del x_o
            state.weights[name][0] = new[0]
            if len(new) > 1:
                state.weights[name][1] = new[1]
            model.get_layer(name).set_weights(state.weights[name])
            refitted.add(name)
            prev = (name, x_p)
            del x_p
        self.seconds += time.perf_counter() - t0
        return names

    def _refit_layerwise(self, state, names: list[str], model, refitted: set) -> bool:
        """The refit in ONE layer-wise pass of the pruned model (:func:`calib.run_layerwise`): each
        layer is refitted when its input on the samples is there, before it runs, so the layers
        after it see its refitted output; the original's targets of layers not yet cached in one
        such pass of the original. False (nothing changed) when a model cannot be walked so."""
        from edgeprune.pipeline.prune.layerwise import run_layerwise

        missing = [n for n in names if n not in self._targets]
        if missing and not run_layerwise(self.graph.model, self.x, {n: self._target_visitor(n) for n in missing}):
            return False

        def refit(name):
            def visit(x_p):
                new = self._fit(name, state, x_p, None)
                state.weights[name][0] = new[0]
                if len(new) > 1:
                    state.weights[name][1] = new[1]
                model.get_layer(name).set_weights(state.weights[name])
                refitted.add(name)
            return visit

        self._first = None
        return run_layerwise(model, self.x, {n: refit(n) for n in names})

    def _target_visitor(self, name: str):
        """Caches layer ``name``'s fit target from the ORIGINAL's input on the samples."""
        def visit(x_o):
            info = self.graph.layers[name]
            cfg = info.layer.get_config()
            w_o = [np.asarray(w, dtype=np.float64) for w in info.layer.get_weights()]
            self._target(name, info, cfg, w_o, cfg.get("use_bias", True), x_o)
        return visit

    def _upstream_key(self, state, name: str, model) -> bytes:
        """A fingerprint of what the input of layer ``name`` depends on: the weights (so the
        widths) of every layer in front of it in topological order, the removed branches, and
        the batches :func:`layer_inputs` runs the samples in."""
        import hashlib

        from edgeprune.pipeline.data.batching import batch_size_for
        from edgeprune.pipeline.prune.branches import removed_layers
        from edgeprune.pipeline.prune.calib import BATCH

        h = hashlib.blake2b(digest_size=16)
        h.update(repr((sorted(removed_layers(state)), batch_size_for(model, max_batch=BATCH))).encode())
        for n in self.graph.order:
            if n == name:
                break
            for w in state.weights.get(n, ()) or ():
                a = np.ascontiguousarray(w)
                h.update(f"{n}:{a.dtype}:{a.shape};".encode())
                h.update(a.tobytes())
        return h.digest()

    def _target(self, name, info, cfg, w_o, use_bias, x_o):
        """The ORIGINAL layer's pre-activation on the calibration rows (cached per layer):
        ``(rows, Y)``, rows = the seeded subset of Conv patch rows (None: all)."""
        if name not in self._targets:
            b = w_o[1] if use_bias else 0.0
            if info.cls == "Dense":  # on the last axis: a sequence's positions are rows
                rows = None
                a_o = x_o.reshape(-1, x_o.shape[-1])
                if x_o.ndim > 2 and len(a_o) > MAX_ROWS:
                    rows = np.sort(np.random.default_rng(0).choice(len(a_o), MAX_ROWS, replace=False))
                    a_o = a_o[rows]
                y = a_o.astype(np.float64) @ w_o[0] + b
            else:
                count = patch_count(x_o.shape, cfg, w_o[0].shape)
                rows = None
                if count > MAX_ROWS:
                    rows = np.sort(np.random.default_rng(0).choice(count, MAX_ROWS, replace=False))
                a_o = _patches(x_o, cfg, w_o[0].shape, rows)
                y = (a_o.astype(np.float32) @ w_o[0].reshape(-1, w_o[0].shape[-1]).astype(np.float32)) + b
            self._targets[name] = (rows, np.asarray(y, dtype=np.float64))
        return self._targets[name]

    def _fit_dual(self, a_p, y, k0, b0, shape, use_bias) -> list[np.ndarray]:
        """Ridge with every coefficient (the bias too) pulled toward the prior, solved as
        ``W = W0 + A' (A A' + lam I)^-1 (Y - A W0)`` (N x N instead of d x d)."""
        a = np.hstack([a_p, np.ones((len(a_p), 1))]) if use_bias else a_p
        prior = np.vstack([k0, b0[None, :]]) if use_bias else k0
        d = a_p.shape[1]
        gram = a @ a.T
        lam = self.ridge * max(float(np.sum(a_p * a_p)) / d, 1e-12)
        sol = prior + a.T @ np.linalg.solve(gram + lam * np.eye(len(a)), y - a @ prior)
        out = [sol[:d].reshape(shape).astype(np.float32)]
        if use_bias:
            out.append(sol[d].astype(np.float32))
        return out

    def _fit(self, name: str, state, x_p: np.ndarray, x_o: np.ndarray) -> list[np.ndarray]:
        g = self.graph
        info = g.layers[name]
        cfg = info.layer.get_config()
        # the original's weights only until the layer's fit target is cached
        w_o = None if name in self._targets else [np.asarray(w, dtype=np.float64) for w in info.layer.get_weights()]
        use_bias = cfg.get("use_bias", True)
        gid_out = g.group_of_producer.get(name)
        # (no group: the output channels are not pruned, the current kernel has all of them)
        kept_out = state.kept[gid_out] if gid_out is not None else np.arange(state.weights[name][0].shape[-1])
        w0 = state.weights[name][0]
        shape = w0.shape
        k0 = w0.reshape(-1, shape[-1]).astype(np.float64)
        b0 = state.weights[name][1].astype(np.float64) if use_bias else np.zeros(shape[-1])
        d = k0.shape[0]
        rows, y_full = self._target(name, info, cfg, w_o, use_bias, x_o)
        y = y_full[:, kept_out]
        if info.cls == "Dense":
            a_p = x_p.reshape(-1, x_p.shape[-1]).astype(np.float64)
            if rows is not None:
                a_p = a_p[rows]
            if d + 1 > len(a_p):  # fewer samples than inputs: the same ridge in its dual (N x N) form
                return self._fit_dual(a_p, y, k0, b0, shape, use_bias)
        else:
            a_p = _patches(x_p, cfg, shape, rows)
        a32 = a_p.astype(np.float32)
        a_p = a_p.astype(np.float64)
        ata = np.zeros((d + 1, d + 1))
        aty = np.zeros((d + 1, k0.shape[1]))
        s = a_p.sum(0)
        ata[:d, :d] = (a32.T @ a32).astype(np.float64)
        ata[:d, d] = s
        ata[d, :d] = s
        ata[d, d] = len(a_p)
        aty[:d] = (a32.T @ y.astype(np.float32)).astype(np.float64)
        aty[d] = y.sum(0)
        lam = self.ridge * max(float(np.trace(ata[:d, :d])) / d, 1e-12)
        reg = np.full(d + 1, lam)
        if use_bias:
            reg[d] = 0.0
        else:  # no bias: pin it to zero
            reg[d] = 1e30
        prior = np.vstack([k0, b0[None, :]])
        sol = np.linalg.solve(ata + np.diag(reg), aty + reg[:, None] * prior)
        out = [sol[:d].reshape(shape).astype(np.float32)]
        if use_bias:
            out.append(sol[d].astype(np.float32))
        return out


def encode(arr: np.ndarray) -> dict:
    """A float32 array as JSON (base64 of its little-endian bytes: exact, compact)."""
    import base64

    a = np.ascontiguousarray(arr, dtype="<f4")
    return {"shape": list(a.shape), "dtype": "float32", "data": base64.b64encode(a.tobytes()).decode("ascii")}


def decode(d: dict) -> np.ndarray:
    import base64

    return np.frombuffer(base64.b64decode(d["data"]), dtype="<f4").reshape(d["shape"]).astype(np.float32)


def refits_of(state) -> dict:
    """The plan's record of the refitted weights: layer -> {weight index: encoded array}."""
    from edgeprune.pipeline.prune.branches import removed_layers

    out = {}
    gone = removed_layers(state)
    for name in sorted(set(getattr(state, "refitted", ()) or ()) - gone):
        out[name] = {str(i): encode(w) for i, w in enumerate(state.weights[name][:2])}
    return out


def masked_refit_reference(original, plan):
    """What a model pruned AND compensated by ``plan`` must compute, from the ORIGINAL at full
    width: merges applied, removed channels masked (:func:`surgery.masked_reference`), and each
    refitted layer's weights scattered into the full-width weights at the kept positions
    (removed input rows stay zero). Returns ``(model, removed)``."""
    from edgeprune.pipeline.prune.graph import DependencyGraph, layout_indices
    from edgeprune.pipeline.prune.surgery import masked_reference

    model, removed = masked_reference(original, plan)
    graph = DependencyGraph(original)
    sizes = {gid: g.size for gid, g in graph.groups.items()}
    kept = {}
    for layer, k in plan.layers.items():
        kept[graph.group_of_producer[layer]] = np.asarray(k, dtype=np.int64)
    for name, ws in (plan.refits or {}).items():
        layer = model.get_layer(name)
        full = [w.copy() for w in layer.get_weights()]
        for i_str, enc in ws.items():
            i = int(i_str)
            val = decode(enc)
            idx = [np.arange(n) for n in full[i].shape]
            for ref in graph.refs_by_layer.get(name, []):
                if ref.weight == i:
                    idx[ref.axis] = layout_indices(ref.layout, sizes, kept)
            full[i][np.ix_(*idx)] = val
        layer.set_weights(full)
    return model, removed

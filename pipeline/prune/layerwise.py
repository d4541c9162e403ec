"""Running a Keras functional model node by node on a whole sample set, keeping only live tensors.

What the data-aware stages need where a residual network's layers do not follow from one another's
inputs alone (a skip tensor crosses every block), so no sub-model from one layer's input on exists:

- the compensation refit (pipeline/prune/compensate.py): ONE pass of the pruned model in which each
  refitted layer is fitted when its input on every sample is there, before it runs, so the layers
  after it see its refitted output (instead of a prefix pass per layer);
- the global greedy's trials (pipeline/prune/allocation/greedy.py): the live tensors in front of
  each consumer on the scoring rows are kept once per round, and a trial runs on from those in
  front of the first layer it changes (instead of the whole model per trial).

Every node runs in batches of at least those :func:`calib.layer_inputs` and :func:`calib.outputs` use
(larger where the node's tensors are small: :meth:`Layerwise._batch`); a sample's numbers do not
depend on its batch-mates (tests/test_compensate.py, tests/test_allocation.py check them against
those functions, bit for bit).
"""
from __future__ import annotations

import warnings

import numpy as np

NODE_BYTES = 64 * 2**20  # one node call's inputs and output in the walk (see Layerwise._batch)


class Layerwise:
    """The node order of ``model``'s graph (None: ``ok`` is False when it is not a single-input
    functional graph)."""

    def __init__(self, model):
        from edgeprune.pipeline.data.batching import batch_size_for
        from edgeprune.pipeline.prune.calib import BATCH

        fn = model if getattr(model, "_nodes_by_depth", None) is not None else getattr(model, "_functional", None)
        self.ok = fn is not None and getattr(fn, "_nodes_by_depth", None) is not None and len(fn.inputs) == 1
        if not self.ok:
            return
        self.fn = fn
        self.nodes = [n for d in sorted(fn._nodes_by_depth, reverse=True) for n in fn._nodes_by_depth[d]
                      if n.operation is not None and not n.is_input]
        self.at = {}
        for i, n in enumerate(self.nodes):
            self.at.setdefault(getattr(n.operation, "name", None), i)
        self.batch = batch_size_for(model, max_batch=BATCH)

    def single_input(self, names) -> bool:
        return all(len(self.nodes[self.at[n]].input_tensors) == 1 for n in names if n in self.at)

    def walk(self, vals: dict, start: int = 0, visit: dict | None = None, keep_at=()) -> tuple[np.ndarray, dict]:
        """Run the nodes from index ``start`` on ``vals`` (tensor id -> array on every sample: the
        live tensors in front of that node). Returns (the first output as float64, one row per
        sample; name -> the live tensors in front of layer ``name`` for each name in ``keep_at``)."""
        from keras import tree

        visit = visit or {}
        uses: dict[int, int] = {}
        for n in self.nodes[start:]:
            for t in n.input_tensors:
                uses[id(t)] = uses.get(id(t), 0) + 1
        out_id = id(self.fn.outputs[0])
        vals = dict(vals)
        count = len(next(iter(vals.values())))
        kept = {}
        for node in self.nodes[start:]:
            ins = node.input_tensors
            op = node.operation
            name = getattr(op, "name", None)
            if name in keep_at and name not in kept:
                kept[name] = dict(vals)
            if name in visit:
                visit[name](vals[id(ins[0])])
            full = None  # the node's outputs on every sample, filled batch by batch (no second copy)
            batch = self._batch(node, vals, ins)
            for a in range(0, count, batch):
                args, kwargs = node.arguments.fill_in({id(t): vals[id(t)][a:a + batch] for t in ins})
                if "training" in getattr(op, "_call_context_args", ()) or getattr(op, "_call_has_training_arg", False):
                    kwargs["training"] = False
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = op(*args, **kwargs)
                outs = [np.asarray(o, dtype=np.float32) for o in tree.flatten(out)]
                del out
                if full is None:
                    if batch >= count:
                        full = outs
                        break
                    full = [np.empty((count,) + o.shape[1:], dtype=np.float32) for o in outs]
                for f, o in zip(full, outs):
                    f[a:a + len(o)] = o
                del outs
            for i, t in enumerate(node.outputs):
                vals[id(t)] = full[i]
            del full
            for t in ins:
                uses[id(t)] -= 1
                if uses[id(t)] == 0 and id(t) != out_id:
                    vals.pop(id(t), None)
        y = vals[out_id]
        return np.asarray(y, dtype=np.float64).reshape(count, -1), kept

    def _batch(self, node, vals, ins) -> int:
        """Samples per call of ``node``: as many as keep its inputs and output of one call within
        :data:`NODE_BYTES` (every live tensor is held on every sample anyway, so only the call's own
        temporaries count), never fewer than the model's batch (:func:`batching.batch_size_for`,
        which bounds ALL layers' activations of a batch together: MobileNetV2-224 gets 3 samples).
        A pass of MobileNetV2-224 on 89 samples: 17.7 s in batches of 3; 8.3 s and 0.88 GB above
        its start with 64 MB; 13.3 s and 1.55 GB with 192 MB (eager temporaries); the same numbers."""
        per = 0
        for t in list(ins) + list(node.outputs):
            a = vals.get(id(t))
            shape = a.shape[1:] if a is not None else tuple(t.shape)[1:]
            per += int(np.prod([int(d or 1) for d in shape])) * 4
        return max(self.batch, NODE_BYTES // max(per, 1))

    def first_input(self, x) -> dict:
        return {id(self.fn.inputs[0]): np.asarray(x, dtype=np.float32)}


def run_layerwise(model, x: np.ndarray, visit: dict) -> bool:
    """Run ``model`` on all of ``x`` node by node, keeping only the tensors later nodes still read.
    Before a layer named in ``visit`` runs, ``visit[name](its input on every sample)`` is called; it
    may change that layer's weights. False, with nothing visited, when the graph cannot be walked so
    (not a single-input functional graph, or a visited layer with several inputs)."""
    lw = Layerwise(model)
    if not lw.ok or not lw.single_input(visit):
        return False
    lw.walk(lw.first_input(x), 0, visit)
    return True

"""Table rounds of the global greedy (pipeline/prune/allocation/greedy.py), for large models.

The chunk-by-chunk greedy tries every group's next chunk and removes ONE per round: its trials grow
as groups x chunks (MobileNetV2-224: 25 groups, ~300 M MACs, about a thousand rounds of 25 full
forward passes to rate 0.9). A table round tries every group's next chunk once, exactly as a
chunk-by-chunk round does, then takes SEVERAL chunks in order of marginal cost: the k-th chunk of a
group is priced at k times its trial's cost per unit saved (a group grows more sensitive as it
narrows), at most :data:`TABLE_MAX_CHUNKS` from one group, until the round removes what the step
still has to. The step's full compensation refit follows as for chunk-by-chunk rounds.

Measured on the bundled example (forced; it runs chunk by chunk by default): the pruned models'
agreement on 5,000 unseen Fashion-MNIST images at equal size -0.34 to +0.54 points from the
chunk-by-chunk greedy's at rates 0.70-0.90, in 0.66x the time (bench/results/table_rounds.md).
"""
from __future__ import annotations

import heapq
import math

import numpy as np

from edgeprune.pipeline.prune.allocation.base import narrowest, prunable_params, removal

# a round's trials, one per group, cost (groups x the model's MACs per sample) on every scoring row;
# above this the greedy takes table rounds
TABLE_MACS = 2e9
TABLE_MAX_CHUNKS = 4  # a group gives at most this many chunks in one table round (1/8 of its width)
EPS = 1e-9
NOISE_REL = 0.05  # as the greedy's auto: a loss change below this fraction of the current loss is noise


def table_mode(alloc, pruner) -> bool:
    """Table rounds: forced by ``table``, else when one round's trials (one per group, each a
    forward pass of the model) cost more than :data:`TABLE_MACS` per scoring row: the
    chunk-by-chunk greedy's trials grow as groups x chunks (MobileNetV2-224: 25 groups, 300 M
    MACs, a thousand rounds to rate 0.9)."""
    if alloc.table is not None:
        return bool(alloc.table)
    from edgeprune.pipeline.search.resources import ResourceModel

    try:
        macs = ResourceModel(pruner.graph, "float32").evaluate(None).macs
    except Exception:  # noqa: BLE001 - a model the resource model cannot cost: chunk by chunk
        return False
    return len(pruner.groups) * float(macs) > TABLE_MACS


def table_round(alloc, pruner, rnd) -> bool:
    """One table round: every group's next chunk is tried once (as in a chunk-by-chunk round),
    then chunks are taken in order of their marginal cost until the round removes what is still
    to remove: the k-th chunk of a group is priced at k times its trial's cost per unit saved
    (a group's sensitivity grows as it narrows), so the cheapest groups give several chunks and
    the dearest none. The chunks a group gives are removed at once (the criterion picks which
    channels, on the round's scores); the consumers are refitted by the full compensation at the
    end of the step. False: nothing can shrink (nothing was removed)."""
    graph, obj = pruner.graph, alloc.objective
    table, table_loss = [], []
    for cost, g, n, _, _, saved, loss, gain in alloc.round_trials(pruner, rnd):
        table.append((max(cost, 0.0), g, n, saved, gain))
        table_loss.append(loss)
    if not table or (obj is not None and not any(t[4] > 1e-12 for t in table)):
        return False
    alloc.table_rounds += 1
    # a chunk whose loss change is within NOISE_REL of the current loss is priced at that (by its
    # saving, as auto does), never at zero: the price of its k-th chunk is k times that
    table = [(max(cost, NOISE_REL * rnd.base / saved), g, n, saved, gain) for cost, g, n, saved, gain in table]
    pos = [t[0] for t in table if t[0] > 0]
    floor = 1e-3 * float(np.median(pos)) if pos else 1.0  # (a zero loss: at rate 0)
    heap, taken, left = [], {}, rnd.remaining
    for i, (cost, g, n, saved, _) in enumerate(table):
        heap.append((max(cost, floor), i, 1))
    heapq.heapify(heap)
    state, changed = pruner.state, False
    while heap and left > EPS * max(alloc._total, 1):
        price, i, k = heapq.heappop(heap)
        cost, g, n, saved, _ = table[i]
        room = state.sizes[g.id] - narrowest(g, alloc.min_keep, pruner.config)
        if (taken.get(i, 0) + 1) * n > room or taken.get(i, 0) >= TABLE_MAX_CHUNKS:
            continue
        taken[i] = taken.get(i, 0) + 1
        left -= saved
        heapq.heappush(heap, (max(cost, floor) * (k + 1), i, k + 1))
    for i in sorted(taken, key=lambda j: graph.order.index(table[j][1].producers[0])
                    if table[j][1].producers and table[j][1].producers[0] in graph.order else j):
        cost, g, n, saved, _ = table[i]
        want = min(taken[i] * n, pruner.state.sizes[g.id] - narrowest(g, alloc.min_keep, pruner.config))
        per_channel = alloc._per_channel(graph, pruner.state, g) if obj is None else 0
        if per_channel > 0:  # the round's last chunk does not overshoot the rate by more than a channel
            now = prunable_params(graph, pruner.state) - (rnd.p_now - rnd.remaining)
            want = min(want, max(1, math.ceil(now / per_channel - EPS)))
            if now <= EPS * alloc._total:
                break
        round_to = int(pruner.config.round_to or 1)
        if round_to > 1:  # widths stay multiples of --round-to
            size = pruner.state.sizes[g.id]
            want = max(0, size - max(narrowest(g, alloc.min_keep, pruner.config), ((size - want) // round_to) * round_to))
        if want <= 0:
            continue
        sel = pruner.criterion.select(pruner.ctx, g, want)
        trial = removal(pruner.state, g, sel)
        before = prunable_params(graph, pruner.state)
        pruner.state = pruner.ctx.state = trial
        changed = True
        pruner.methods[g.id] = f"{sel.method} (global, table)"
        alloc.chunks += taken[i]
        # (loss: the round's trial of ONE chunk; the group gave `chunks` of them, priced k x its cost)
        alloc.log.append({"group": g.name, "removed": int(want), "width": int(trial.sizes[g.id]),
                         "params_saved": int(before - prunable_params(graph, trial)), "chunks": taken[i],
                         "table_cost": float(cost), "loss": float(table_loss[i])})
    return changed

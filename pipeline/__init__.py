"""The stages of edgeprune: load, graph, importance, surgery, prune, convert, fidelity, run."""

"""The stages of edgeprune, one sub-package per concern: prune/ (graph, handlers, criteria, allocation,
plan, surgery), data/ (model loading, samples, split), convert/ (TFLite, fidelity), search/ (``edgeprune
run``), report/ (report files, CI outputs, gate); atomic.py and choices.py are shared by all."""

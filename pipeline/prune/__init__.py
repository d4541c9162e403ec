"""Pruning: the dependency graph of coupled channels, what each layer kind means (handlers/), importance
(criteria/), width allocation (allocation/), the plan, surgery, compensation and recovery training."""

"""The search of ``edgeprune run``: config, setup, run directory, host phase, device phase (one board or
a farm), candidates, resource and latency predictions, noise, verdict, caches across runs."""

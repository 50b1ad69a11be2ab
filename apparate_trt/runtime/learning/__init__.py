"""Ramps that keep learning from the served stream: reservoirs, refits off the batch path, swaps
(:mod:`.learner`, :mod:`.reservoir`, :mod:`.refit_worker`)."""

"""Plumbing every layer may use: value checks, device choice, processes (`distributed`), run folders,
run facts and result files. Nothing here knows about the network or the method."""

"""The science: the rules of grokking, as pure functions on plain values.

When a run memorised and generalised (grokking), its three phases (phases), a sweep's phase
diagram, sweep expansion and packing (sweeps), min/max downsampling, training speed (progress),
and a checkpoint as TransformerLens weights (export). No database, no web framework, no torch:
imports only the contract.
"""

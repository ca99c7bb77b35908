"""Analysis of grokking runs: pure functions on tensors. Import-light on purpose: import the
submodule you need.

fourier: the Fourier progress measures of Nanda et al. 2023 for modular tasks (torch), one
pure function per quantity.
grid: those measures of a model over the full (a, b) grid, its forward pass run in chunks
(progress_measures_all); it imports fourier, never the other way.
fixed_keys: the same measures with the key frequencies fixed (from the final model), as the
paper computes them over a run's checkpoints.
circuit: the circuit drawn, per member (embedding clocks, neurons by frequency, activation
waves, attention), from grid's chunks.
callback: the on_analysis callback a training run takes (worker and `groklab train` alike).
The grokking rules themselves (memorization/generalization steps, Liu et al.'s phases) live in
service/science/grokking.py, and Nanda et al.'s three phases in service/science/phases.py,
which the torch-free API server imports too.
"""

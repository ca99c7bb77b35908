"""Analysis of grokking runs: pure functions on tensors. Import-light on purpose: import the
submodule you need.

fourier: the Fourier progress measures of Nanda et al. 2023 for modular tasks (torch).
The grokking rules themselves (memorization/generalization steps, phases) live in
service/grokking.py, which the torch-free API server imports too.
"""

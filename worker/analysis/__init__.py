"""Analysis of grokking runs. Import-light on purpose: import the submodule you need.

grokking: memorization/generalization steps and the phase of a run (pure Python, no torch;
    the API server imports it).
fourier: the Fourier progress measures of Nanda et al. 2023 for modular tasks (torch).
"""

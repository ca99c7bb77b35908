"""The training engine: pure PyTorch, no database, queue or web framework.

    data.py        the algorithmic datasets (Z_p ops of Power et al. 2022, S5)
    models.py      ensemble transformer and MLP (leading member dimension E on every weight)
    optim.py       AdamW/Adam/SGD with per-member lr and weight decay, Grokfast, ⊥Grad, losses
    train.py       Trainer: the loop, evaluation, callbacks
    checkpoint.py  safetensors checkpoints (no pickle), and a trainer's state in them
    pack.py        a pack's state split into single-run states per member, and merged back
    local.py       train_local, behind `groklab train`
"""

ENGINE_VERSION = "0.1.0"

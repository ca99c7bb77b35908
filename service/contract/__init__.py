"""The contract: what the API, the store and the worker agree on.

The experiment spec and its caps (spec, limits, budgets, presets), the settings, the tables
(models), the checkpoint layout, how non-finite numbers are carried, and the alerts' contract.
Imports nothing else of ours: every other part of the service, and the worker, import it.
"""

"""Who may do what: bearer tokens and the principal they act for (auth), and the per-owner
quotas checked at submit (quotas). Decisions only: the rows are read and written by the store,
and the API turns a refusal into its HTTP answer.
"""

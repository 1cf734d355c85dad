"""Risk-aware allocation of a data budget against posterior draws: the certified risk program (SQP with cvxpy subproblems), constraints, baselines, decision uncertainty and the typed AllocationResult.

Imports evaluate and below.
"""

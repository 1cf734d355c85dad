"""Posteriors from grids: the generic NUTS/SVI fit over the law registry, the posterior contract, simulation-based calibration and the non-Bayesian bootstrap.

Imports laws and data.
"""

"""Questions asked of a posterior: prediction for any allocation, held-out checks and calibration, hubs and islands, model comparison (PSIS-LOO), and their typed results.

Imports inference, laws and data.
"""

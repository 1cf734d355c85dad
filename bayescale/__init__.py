"""bayescale: Bayesian transfer scaling laws and risk-aware data allocation across domains.

The flow is grid -> posterior -> decisions -> report:

- :mod:`bayescale.data.grid`     load, validate and save loss grids (NetCDF, CSV)
- :mod:`bayescale.data.simulate` simulated worlds with known parameters
- :mod:`bayescale.inference.fit`      NUTS fit of the hierarchical transfer law (:mod:`bayescale.laws.transfer`)
- :mod:`bayescale.evaluate.predict`  posterior predictive loss for any allocation
- :mod:`bayescale.optimise.allocate` risk-aware allocation against posterior draws (cvxpy)
- :mod:`bayescale.evaluate.check`    held-out extrapolation checks
- :mod:`bayescale.render.report`   figures and an HTML report
"""

import os as _os

# NUTS chains run in parallel only if XLA exposes several host devices, and that must
# be set before JAX starts its backend, so it happens here, on import.
if "--xla_force_host_platform_device_count" not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = (
        _os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={max(4, _os.cpu_count() or 1)}"
    ).strip()

__version__ = "0.1.0"

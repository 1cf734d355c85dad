"""bayescale: Bayesian transfer scaling laws and risk-aware data allocation across domains.

The flow is grid -> posterior -> decisions -> report:

- :mod:`bayescale.grid`     load, validate and save loss grids (NetCDF, CSV)
- :mod:`bayescale.simulate` simulated worlds with known parameters
- :mod:`bayescale.fit`      NUTS fit of the hierarchical transfer law (:mod:`bayescale.model`)
- :mod:`bayescale.predict`  posterior predictive loss for any allocation
- :mod:`bayescale.allocate` risk-aware allocation against posterior draws (cvxpy)
- :mod:`bayescale.check`    held-out extrapolation checks
- :mod:`bayescale.report`   figures and an HTML report
"""

import os as _os

# NUTS chains run in parallel only if XLA exposes several host devices, and that must
# be set before JAX starts its backend, so it happens here, on import.
if "--xla_force_host_platform_device_count" not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = (
        _os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={max(4, _os.cpu_count() or 1)}"
    ).strip()

__version__ = "0.1.0"

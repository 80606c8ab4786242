"""Cohorts in every layout they come in: one reader (`reader`), the as-of selection of long lab
results (`asof`), and the simulator of cohorts with known true risks (`simulator`)."""

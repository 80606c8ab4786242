"""Post-market surveillance from the audit trail (`triage monitor`): what the deployed model and
its shadow versions did, week by week, whether their inputs and scores drifted from training,
and, once outcomes arrive, how they actually performed.

Modules: `audit_rows` (the trail as frames), `operations` (volumes, codes, drift, shadow
agreement), `outcomes` (reading, pseudonymising and linking outcomes), `realised` (realised
performance, the evaluation training and replay use), `report` (monitor.html) and `run` (the
orchestrator and monitor.json).
"""

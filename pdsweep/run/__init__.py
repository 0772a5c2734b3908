"""Running sweeps: a run in its directory (launch.py), the sweep's task graph over worker processes
(scheduler.py), Optuna studies (search.py) and MLflow tracking (tracking.py).
"""

"""Many runs shared between worker processes through Optuna: storages, studies, worker liveness, tuning, the grid."""

"""The pure NumPy core: exit outputs (`outputs`), metrics (`metrics`), exit scores (`scores`), threshold policies
(`policies`), post-hoc calibrators (`calibration`), a split prepared under a calibrator and score (`prepared`), the
evaluation report (`evaluation`), the per-exit threshold search (`search`), the policy file (`policy_file`) and the
choice of a policy from a search (`policy_choice`), and synthetic exit outputs for tests and benchmarks
(`synthetic`).

No torch, Ray, MLflow, models, training or orchestration (an import contract). The public API is `eeopt.X`
(`eeopt.ExitOutputs`, `eeopt.evaluate_exits`, ...); these modules are where the code lives.
"""

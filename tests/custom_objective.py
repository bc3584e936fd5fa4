"""A custom study objective, importable as 'custom_objective:accuracy_per_cost' from the tests folder."""


def accuracy_per_cost(result):
    """Val accuracy at half the budget, minus a penalty per share of the last exit's cost."""
    costs = result.val.costs
    return result.metrics["val/acc_at_50"] - 0.1 * result.metrics["val/mean_cost"] / costs[-1]

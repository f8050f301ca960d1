"""rlhf-plan: plan, estimate and execute distributed RLHF workflows.

The `planner` package holds the domain model (model, hardware and cluster specs, workflows,
meshes, layouts, plans, the augmented graph), the search space and search, and the `plan` CLI.
"""

__version__ = "0.1.0"

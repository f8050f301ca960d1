"""The domain: what users write and plans store (model and hardware specs, clusters,
workflows, meshes, layouts and executions, plans, the augmented graph), plus file I/O and
user-facing errors. Imports nothing outside planner.domain."""

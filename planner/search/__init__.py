"""The search: candidate space, priced tables, the compiled fast evaluator, MCMC,
exhaustive search, baselines, and the pipeline that ties them together (pipeline.py).
Imports planner.domain, planner.sharding and costmodel."""

"""The shared pure functions of design.md section 3 (no torch): rank groups of a layout,
the pipeline partition, parameter shards and transfer schedules. The cost model prices
them and the runtime executes them. Imports planner.domain only."""

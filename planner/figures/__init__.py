"""Pictures of workflows and plans (matplotlib, drawn off-screen with the Agg backend)."""

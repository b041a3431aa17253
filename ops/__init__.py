"""Operator tools: the local broker, topic admin, the simulator, the demo, the report and the CLI."""

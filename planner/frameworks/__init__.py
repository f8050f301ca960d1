"""Frameworks users already run (verl, AReaL, ROLL, OpenRLHF): plans exported to their
configs, their configs imported as plans (planner.frameworks.target says the interface)."""

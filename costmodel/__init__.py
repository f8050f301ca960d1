"""Cost model: hardware specs, profiles, compute/communication/memory formulas, simulator."""

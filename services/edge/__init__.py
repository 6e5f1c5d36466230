"""The edge agent: serves the fleet's current, verified package on an edge device."""

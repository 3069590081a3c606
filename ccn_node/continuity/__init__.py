"""Character continuity: plate, context assembly, probe and metrics, instances, consensus."""

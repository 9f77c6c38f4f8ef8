"""The run screen's widgets: log view, loss chart, stage tracker, progress and verdict panel."""

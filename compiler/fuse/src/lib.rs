//! Fusion planner and Kernel IR will live here (issue 4). Nothing is implemented yet.

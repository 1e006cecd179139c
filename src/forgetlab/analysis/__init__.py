"""Analysis: CL metrics from R matrices, group statistics, effects and reports (reads run dirs only)."""

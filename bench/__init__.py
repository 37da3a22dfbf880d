"""Benchmark: the daemon's AWS call counts against SPIRE's legacy alias-based scans."""

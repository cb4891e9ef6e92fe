"""Socket-level load balancing: pick a backend at connect(), in the kernel."""

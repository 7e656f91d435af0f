"""Job templates (a graph plus a manifest each), installed with comfyq as the package `comfyq_workflows`."""

"""Migrations and named queries, installed with comfyq as the package `comfyq_sql` (package data), so an installed
comfyq finds them from any working directory."""

"""WSGI apps the multi-process tests run under gunicorn."""

"""The baseline of bench.submit: a minimal Flask app under gunicorn doing one INSERT per POST (psycopg2, one
autocommit connection per worker process), and a constant answer. Reads BENCH_DATABASE_URL.

    gunicorn --workers 5 'bench.baseline_app:app'
"""

from __future__ import annotations

import json
import os

import psycopg2
from flask import Flask, jsonify, request

app = Flask(__name__)
_conn = None

SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_flask_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    body jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""


def _cursor():  # type: ignore[no-untyped-def]
    global _conn
    if _conn is None or _conn.closed:
        _conn = psycopg2.connect(os.environ["BENCH_DATABASE_URL"], application_name="bench-flask")
        _conn.autocommit = True
    return _conn.cursor()


@app.post("/jobs")
def submit():  # type: ignore[no-untyped-def]
    body = request.get_json()
    with _cursor() as cur:
        cur.execute("INSERT INTO bench_flask_jobs (body) VALUES (%s) RETURNING id", (json.dumps(body),))
        (job_id,) = cur.fetchone()
    return jsonify({"id": job_id, "status": "queued"}), 202


@app.get("/ping")
def ping():  # type: ignore[no-untyped-def]
    return "ok"

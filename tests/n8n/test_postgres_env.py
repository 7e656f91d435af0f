"""n8n's Postgres credential gets host and port the way libpq reads the URL: `?host=/socket/dir&port=N` (the
embedded server's URL has no hostname, only a socket folder) wins over the authority part."""

from __future__ import annotations

from n8n import n8nctl


def test_a_socket_url_gives_n8n_the_socket_folder() -> None:
    env = n8nctl.postgres_env("postgresql://postgres@/comfyq?host=/tmp/pg-sockets&port=5433")
    assert env["COMFYQ_PGHOST"] == "/tmp/pg-sockets" and env["COMFYQ_PGPORT"] == "5433"
    assert env["COMFYQ_PGDATABASE"] == "comfyq" and env["COMFYQ_PGUSER"] == "postgres"


def test_a_tcp_url_gives_its_host_and_port() -> None:
    env = n8nctl.postgres_env("postgresql://comfyq:s%40cret@db:6543/queue")
    assert (env["COMFYQ_PGHOST"], env["COMFYQ_PGPORT"], env["COMFYQ_PGPASSWORD"]) == ("db", "6543", "s@cret")

-- First start of the compose Postgres only: n8n keeps its own state in a database of its own.
CREATE DATABASE n8n OWNER comfyq;

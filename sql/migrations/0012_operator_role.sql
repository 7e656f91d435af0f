-- A third token role above admin. A tenant's admin acts on its own tenant only (its tokens, its retention);
-- an operator runs the deployment and acts across tenants (workers, tenants and their limits, every tenant's
-- tokens and retention). An operator token still names a tenant: the one its own submissions go to.
-- Forward-only: never edit this file once applied.

ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_role_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_role_check CHECK (role IN ('submitter', 'admin', 'operator'));

-- etl-observer: the database side of the AWS runtime (Redshift Serverless), least privilege.
--
-- Run once per environment, as an admin of the namespace, after the stack is deployed:
--   python -m infra_scripts.deploy --env dev ... --grants-out grants.dev.sql
-- fills in the ${...} names below from the stack outputs (or replace them by hand), then run the file in
-- the query editor. CREATE USER / CREATE ROLE fail if the user or role already exists: skip those lines
-- on a re-run; every GRANT and REVOKE is safe to repeat.
--
-- Who is who. The Data API authenticates with IAM, and Redshift Serverless maps an IAM role to the
-- database user "IAMR:<role name>" (created on its first connection; created here up front so the
-- grants have someone to go to):
--   ${LoaderDatabaseUser}  the state machine's role: runs the batch load (BatchExecuteStatement, one transaction)
--   ${ReaderDatabaseUser}  write_evidence's role: reads the ledger and row counts back for the evidence report
-- The Dagster checks read with their own identity: give it etl_reader (last section).
--
-- Why not the seed's `GRANT ALL ON <table> TO PUBLIC`: PUBLIC is every user of the database, now and
-- later, and ALL includes UPDATE, DELETE, TRUNCATE, REFERENCES and ALTER. Any login (a BI tool, an
-- analyst, a leaked credential) could rewrite or empty public.employees and etl_observer.load_ledger,
-- and the ledger is what the evidence reports vouch with: a row deleted there makes a loaded file look
-- new and a duplicate load look legitimate. Here each identity gets only the privileges its statements
-- use, through a role, so access is granted, revoked and audited (SVV_ROLE_GRANTS,
-- SVV_RELATION_PRIVILEGES) in one place.

-- 1. The objects, owned by the admin (the same DDL as aws_handlers.core.load_sql.ddl_statements;
--    tests/infra_scripts keeps the two equal). The schema "public" exists already.
CREATE SCHEMA IF NOT EXISTS etl_observer;

CREATE TABLE IF NOT EXISTS "public"."employees" (
  "employee_id" INTEGER NOT NULL,
  "first_name" VARCHAR(128) NOT NULL,
  "last_name" VARCHAR(128) NOT NULL,
  "email" VARCHAR(256) NOT NULL,
  "department" VARCHAR(128) NOT NULL,
  "job_title" VARCHAR(256),
  "salary" DECIMAL(12,2) NOT NULL,
  "hire_date" DATE NOT NULL,
  "is_active" BOOLEAN NOT NULL,
  "manager_id" INTEGER,
  "_batch_id" VARCHAR(128) NOT NULL,
  "_source_file" VARCHAR(1024) NOT NULL,
  "_source_line" BIGINT NOT NULL,
  "_loaded_at" TIMESTAMP NOT NULL
) SORTKEY ("_batch_id");

CREATE TABLE IF NOT EXISTS etl_observer.load_ledger (
  dataset VARCHAR(128) NOT NULL,
  file_key VARCHAR(1024) NOT NULL,
  sha256 CHAR(64) NOT NULL,
  batch_id VARCHAR(128) NOT NULL,
  status VARCHAR(16) NOT NULL,
  duplicate_of_batch VARCHAR(128),
  rows BIGINT NOT NULL,
  loaded_at TIMESTAMP NOT NULL
);

-- 2. Close the seed's hole (harmless where it was never opened).
REVOKE ALL ON "public"."employees" FROM PUBLIC;
REVOKE ALL ON etl_observer.load_ledger FROM PUBLIC;
REVOKE ALL ON SCHEMA etl_observer FROM PUBLIC;

-- 3. The loader: the batch replace of aws_handlers.core.load_sql.batch_load_statements.
--    Temp tables (stage, batch files, file status) need TEMP on the database, not CREATE on a schema;
--    DELETE ... WHERE and INSERT ... SELECT need SELECT; nothing UPDATEs, nothing TRUNCATEs or DROPs a
--    permanent table, so neither is granted.
CREATE ROLE etl_loader;
GRANT USAGE ON SCHEMA "public" TO ROLE etl_loader;
GRANT USAGE ON SCHEMA etl_observer TO ROLE etl_loader;
GRANT SELECT, INSERT, DELETE ON TABLE "public"."employees" TO ROLE etl_loader;
GRANT SELECT, INSERT, DELETE ON TABLE etl_observer.load_ledger TO ROLE etl_loader;
GRANT TEMP ON DATABASE "${RedshiftDatabase}" TO ROLE etl_loader;
-- COPY ... IAM_ROLE '<copy role>': only the loader may use the COPY role, and only for COPY.
GRANT ASSUMEROLE ON '${CopyRoleArn}' TO ROLE etl_loader FOR COPY;
-- By default every user may use every IAM role associated with the namespace (ASSUMEROLE ON ALL TO PUBLIC).
-- Revoking that default is namespace-wide (other users' COPY/UNLOAD need explicit grants afterwards), so it
-- is left to the namespace admin:
--   REVOKE ASSUMEROLE ON ALL FROM PUBLIC FOR ALL;

-- 4. The reader: the evidence read-back and the Dagster checks (row counts, ledger, primary-key duplicates).
CREATE ROLE etl_reader;
GRANT USAGE ON SCHEMA "public" TO ROLE etl_reader;
GRANT USAGE ON SCHEMA etl_observer TO ROLE etl_reader;
GRANT SELECT ON TABLE "public"."employees" TO ROLE etl_reader;
GRANT SELECT ON TABLE etl_observer.load_ledger TO ROLE etl_reader;

-- 5. The IAM identities.
CREATE USER "${LoaderDatabaseUser}" PASSWORD DISABLE;
CREATE USER "${ReaderDatabaseUser}" PASSWORD DISABLE;
GRANT ROLE etl_loader TO "${LoaderDatabaseUser}";
GRANT ROLE etl_reader TO "${ReaderDatabaseUser}";
-- The Dagster deployment's identity (an IAM role maps to "IAMR:<name>", an IAM user to "IAM:<name>"):
--   GRANT ROLE etl_reader TO "IAMR:<dagster role name>";

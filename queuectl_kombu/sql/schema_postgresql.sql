-- What PostgreSQL needs beside the tables of schema.sql (which postgres.schema_script translates:
-- identity ids, BIGINT, DOUBLE PRECISION, results' bytes in a bytea column of their own): the
-- schema's version, and SQLite's JSON functions as the statements of sql/ use them (paths of
-- the form '$.a.b' or '$.a."b-c"'), so that those statements need no PostgreSQL text of their own.
-- SET search_path FROM CURRENT: the functions find each other whatever the caller's search_path.

CREATE TABLE IF NOT EXISTS schema_version (
    version  INTEGER NOT NULL
);

CREATE OR REPLACE FUNCTION json_path(path text) RETURNS text[] LANGUAGE sql IMMUTABLE
AS 'SELECT string_to_array(replace(substr(path, 3), ''"'', ''''), ''.'')';

CREATE OR REPLACE FUNCTION json_valid(doc text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE
AS 'BEGIN PERFORM doc::jsonb; RETURN true; EXCEPTION WHEN others THEN RETURN false; END';

CREATE OR REPLACE FUNCTION json_extract(doc text, path text) RETURNS text LANGUAGE sql IMMUTABLE
SET search_path FROM CURRENT
AS 'SELECT doc::jsonb #>> json_path(path)';

CREATE OR REPLACE FUNCTION json_set(doc text, path text, value anyelement) RETURNS text LANGUAGE sql IMMUTABLE
SET search_path FROM CURRENT
AS 'SELECT jsonb_set(doc::jsonb, json_path(path), to_jsonb(value))::text';

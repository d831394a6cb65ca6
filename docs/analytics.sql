-- The seed README's "Example Analytics Use", over a bronze layer written by
--   python fhir_patient_generator.py --count 100000 --seed 7 --as-of 2025-10-13T02:22:22Z \
--       --format ndjson --output ./lake/bronze
-- Run it with the README's one-line Python command (the duckdb package), or with the separately
-- installed DuckDB CLI: duckdb < docs/analytics.sql (tests/test_duckdb.py runs exactly this file).
-- The globs read every layout: per-file JSON or NDJSON, plain or .gz. The columns are given, not
-- inferred (inferring a schema samples files), and a missing deceasedDateTime (the living) is NULL.

-- name: views
CREATE OR REPLACE VIEW patient AS
SELECT * FROM read_json('./lake/bronze/patient/*', format = 'newline_delimited', columns = {
    id: 'VARCHAR',
    gender: 'VARCHAR',
    birthDate: 'DATE',
    deceasedDateTime: 'TIMESTAMPTZ',
    address: 'STRUCT(city VARCHAR, district VARCHAR, state VARCHAR, postalCode VARCHAR,
        country VARCHAR)[]',
    managingOrganization: 'STRUCT(reference VARCHAR, display VARCHAR)'
});
CREATE OR REPLACE VIEW organization AS
SELECT * FROM read_json('./lake/bronze/organization/*', format = 'newline_delimited', columns = {
    id: 'VARCHAR',
    identifier: 'STRUCT(system VARCHAR, value VARCHAR)[]',
    name: 'VARCHAR',
    address: 'STRUCT(line VARCHAR[], city VARCHAR, district VARCHAR, state VARCHAR,
        postalCode VARCHAR, country VARCHAR)[]'
});

-- name: mortality_by_state
SELECT
    address[1].state AS state,
    count(*) AS patients,
    count(deceasedDateTime) AS deceased,
    round(100.0 * count(deceasedDateTime) / count(*), 2) AS mortality_pct
FROM patient
GROUP BY state
ORDER BY state;

-- name: mortality_by_county
SELECT
    address[1].state AS state,
    address[1].district AS county,
    count(*) AS patients,
    count(deceasedDateTime) AS deceased,
    round(100.0 * count(deceasedDateTime) / count(*), 2) AS mortality_pct
FROM patient
GROUP BY ALL
ORDER BY state, county;

-- name: patients_per_hospital
SELECT
    list_filter(o.identifier, lambda i: i.system LIKE '%/CMSCertificationNumber')[1].value AS ccn,
    o.name,
    o.address[1].state AS state,
    count(p.id) AS patients
FROM organization AS o
LEFT JOIN patient AS p ON p.managingOrganization.reference = 'Organization/' || o.id
GROUP BY ALL
ORDER BY patients DESC, ccn;

-- name: dangling_references
SELECT count(*) AS dangling
FROM patient AS p
ANTI JOIN organization AS o ON p.managingOrganization.reference = 'Organization/' || o.id;

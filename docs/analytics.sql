-- The seed README's "Example Analytics Use", over a bronze layer written by
--   python fhir_patient_generator.py --count 100000 --seed 7 --output ./lake/bronze
-- Run with Python's duckdb package (see README) or the separately installed duckdb CLI:
--   duckdb < docs/analytics.sql   (tests/test_duckdb.py runs exactly this file).
-- The globs read every layout: per-file JSON or NDJSON, plain or .gz (DuckDB detects both);
-- union_by_name keeps deceasedDateTime even when the sampled files have none.

-- name: views
CREATE OR REPLACE VIEW patient AS
SELECT * FROM read_json_auto('./lake/bronze/patient/*', union_by_name = true);
CREATE OR REPLACE VIEW organization AS
SELECT * FROM read_json_auto('./lake/bronze/organization/*', union_by_name = true);

-- name: mortality_by_state
SELECT
    address[1].state AS state,
    count(*) AS patients,
    count(deceasedDateTime) AS deceased,
    round(100.0 * count(deceasedDateTime) / count(*), 2) AS mortality_pct
FROM patient
GROUP BY state
ORDER BY state;

-- name: patients_per_organization
SELECT
    o.id AS organization,
    o.name,
    o.address[1].state AS state,
    count(p.id) AS patients
FROM organization AS o
LEFT JOIN patient AS p ON p.managingOrganization.reference = 'Organization/' || o.id
GROUP BY ALL
ORDER BY patients DESC, organization;

-- name: dangling_references
SELECT count(*) AS dangling
FROM patient AS p
ANTI JOIN organization AS o ON p.managingOrganization.reference = 'Organization/' || o.id;

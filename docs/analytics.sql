-- The seed README's "Example Analytics Use", over a bronze layer written by
--   python fhir_patient_generator.py --count 100000 --seed 7 --as-of 2025-10-13T02:22:22Z \
--       --format ndjson --output ./lake/bronze
-- Run it with the README's one-line Python command (the duckdb package), or with the separately
-- installed DuckDB CLI: duckdb < docs/analytics.sql (tests/test_duckdb.py runs exactly this file).
-- The globs read every layout: per-file JSON or NDJSON, plain or .gz. The columns are given, not
-- inferred (inferring a schema samples files), and a missing deceasedDateTime (the living) is NULL.
-- The sections from "stay_views" on need a layer written with --encounters (encounter/ and
-- condition/ beside patient/): CMS-style metrics of the inpatient stays (docs/cms-metrics.md).

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

-- name: stay_views
-- Inpatient stays (a layer written with --encounters: encounter/ and condition/ beside patient/).
-- The sections from here on need those folders. Stays are read in their R4 shape (the default
-- --fhir-version). A stay's principal diagnosis is the Condition of Encounter.diagnosis rank 1,
-- its hospital the serviceProvider's CCN, its length the midnights between admission and
-- discharge (at least 1 day), death in hospital the discharge disposition 'exp'. HRRP cohorts
-- are read from the principal ICD-10-CM code of patients 65+ (CABG and hip/knee replacement are
-- procedure cohorts: here atherosclerotic heart disease I25.1 and hip or knee osteoarthritis
-- M16 and M17 at 65+ stand for them, the only stays of those codes the generator makes at 65+).
CREATE OR REPLACE VIEW encounter AS
SELECT * FROM read_json('./lake/bronze/encounter/*', format = 'newline_delimited', columns = {
    id: 'VARCHAR',
    status: 'VARCHAR',
    subject: 'STRUCT(reference VARCHAR)',
    period: 'STRUCT("start" TIMESTAMPTZ, "end" TIMESTAMPTZ)',
    diagnosis: 'STRUCT(condition STRUCT(reference VARCHAR), rank INTEGER)[]',
    hospitalization: 'STRUCT(dischargeDisposition STRUCT(coding STRUCT(system VARCHAR,
        code VARCHAR, display VARCHAR)[], text VARCHAR))',
    serviceProvider: 'STRUCT(reference VARCHAR, display VARCHAR)'
});
CREATE OR REPLACE VIEW condition AS
SELECT * FROM read_json('./lake/bronze/condition/*', format = 'newline_delimited', columns = {
    id: 'VARCHAR',
    code: 'STRUCT(coding STRUCT(system VARCHAR, code VARCHAR, display VARCHAR)[])',
    subject: 'STRUCT(reference VARCHAR)',
    encounter: 'STRUCT(reference VARCHAR)',
    onsetDateTime: 'TIMESTAMPTZ'
});
-- The silver table of stays: read once from the bronze files, then every query below uses it.
CREATE OR REPLACE TABLE stay AS
SELECT
    e.id,
    p.id AS patient,
    p.gender,
    date_part('year', age(e.period.start::DATE, p.birthDate)) AS age,
    p.deceasedDateTime AS died,
    list_filter(o.identifier, lambda i: i.system LIKE '%/CMSCertificationNumber')[1].value AS ccn,
    e.period.start AS admitted,
    e.period."end" AS discharged,
    greatest(1, date_diff('day', e.period.start::DATE, e.period."end"::DATE)) AS days,
    e.hospitalization.dischargeDisposition.coding[1].code = 'exp' AS died_in_hospital,
    c.id AS condition_id,
    c.code.coding[1].code AS icd10,
    CASE
        WHEN date_part('year', age(e.period.start::DATE, p.birthDate)) < 65 THEN NULL
        WHEN c.code.coding[1].code LIKE 'I21%' THEN 'AMI'
        WHEN regexp_matches(c.code.coding[1].code, '^(I50|I11\.0|I13\.[02])') THEN 'HF'
        WHEN regexp_matches(c.code.coding[1].code, '^J1[2-8]') THEN 'PN'
        WHEN regexp_matches(c.code.coding[1].code, '^J4[1-4]') THEN 'COPD'
        WHEN c.code.coding[1].code LIKE 'I25.1%' THEN 'CABG'
        WHEN regexp_matches(c.code.coding[1].code, '^M1[67]') THEN 'HIP-KNEE'
    END AS cohort
FROM encounter AS e
JOIN patient AS p ON e.subject.reference = 'Patient/' || p.id
JOIN organization AS o ON e.serviceProvider.reference = 'Organization/' || o.id
JOIN condition AS c
    ON list_filter(e.diagnosis, lambda d: d.rank = 1)[1].condition.reference = 'Condition/' || c.id;
-- Each stay with the patient's next admission (for readmissions) and the data's last instant.
CREATE OR REPLACE TABLE stay_next AS
SELECT
    *,
    lead(admitted) OVER (PARTITION BY patient ORDER BY admitted) AS next_admitted,
    max(discharged) OVER () AS data_end
FROM stay;

-- name: alos_per_hospital
SELECT ccn, count(*) AS stays, sum(days) AS patient_days, round(avg(days), 2) AS alos
FROM stay
GROUP BY ccn
ORDER BY stays DESC, ccn;

-- name: alos_per_diagnosis
-- The MS-DRG is not on the resource: join icd10 (and age) to reference_data/inpatient_dx.csv.
SELECT
    icd10,
    age >= 65 AS age_65_plus,
    count(*) AS stays,
    round(avg(days), 2) AS alos,
    round(exp(avg(ln(days))), 2) AS geometric_los
FROM stay
GROUP BY ALL
ORDER BY stays DESC, icd10, age_65_plus;

-- name: admissions_per_1000
-- Stays a year per 1,000 persons by age band and sex at admission. Person-years: each patient's
-- time in the stays' span (first admission to last discharge), from birth or the span's start to
-- death or the span's end, counted in the band of the age at its middle.
WITH span AS (
    SELECT min(admitted) AS t0, max(discharged) AS t1 FROM stay
), exposure AS (
    SELECT
        gender,
        greatest(t0, birthDate::TIMESTAMPTZ) AS t_in,
        least(t1, coalesce(deceasedDateTime, t1)) AS t_out,
        birthDate
    FROM patient, span
), person_years AS (
    SELECT
        gender,
        date_part('year', age((t_in + (t_out - t_in) / 2)::DATE, birthDate)) AS a,
        date_diff('second', t_in, t_out) / (365.25 * 86400) AS years
    FROM exposure
    WHERE t_out > t_in
), banded AS (
    SELECT
        CASE WHEN a < 18 THEN '0-17' WHEN a < 45 THEN '18-44' WHEN a < 65 THEN '45-64'
            WHEN a < 75 THEN '65-74' WHEN a < 85 THEN '75-84' ELSE '85+' END AS age_band,
        gender,
        sum(years) AS person_years
    FROM person_years
    GROUP BY ALL
), stays AS (
    SELECT
        CASE WHEN age < 18 THEN '0-17' WHEN age < 45 THEN '18-44' WHEN age < 65 THEN '45-64'
            WHEN age < 75 THEN '65-74' WHEN age < 85 THEN '75-84' ELSE '85+' END AS age_band,
        gender,
        count(*) AS stays
    FROM stay
    GROUP BY ALL
)
SELECT
    age_band,
    gender,
    stays,
    round(person_years, 1) AS person_years,
    round(1000 * stays / person_years, 1) AS per_1000_a_year
FROM stays JOIN banded USING (age_band, gender)
ORDER BY age_band, gender;

-- name: mortality_per_cohort
-- In-hospital: share of the cohort's stays that end in death. 30-day (CMS MORT-30 style): death
-- within 30 days of admission, first stay per patient and cohort, admissions at least 30 days
-- before the data end.
WITH first_stay AS (
    SELECT * FROM stay_next
    WHERE cohort IS NOT NULL AND admitted <= data_end - INTERVAL 30 DAY
    QUALIFY row_number() OVER (PARTITION BY patient, cohort ORDER BY admitted) = 1
)
SELECT
    cohort,
    count(*) AS index_stays,
    round(100.0 * avg(died_in_hospital::INTEGER), 2) AS in_hospital_pct,
    round(100.0 * avg((died IS NOT NULL AND died <= admitted + INTERVAL 30 DAY)::INTEGER), 2)
        AS mortality_30_day_pct
FROM first_stay
GROUP BY cohort
ORDER BY cohort;

-- name: readmission_per_cohort
-- 30-day readmission (HRRP style): an index stay is a cohort stay (65+) discharged alive at least
-- 30 days before the data end, readmitted when the patient's next admission, at any hospital,
-- starts within 30 days of its discharge. Planned readmissions are not told apart.
SELECT
    cohort,
    count(*) AS index_stays,
    count(*) FILTER (next_admitted <= discharged + INTERVAL 30 DAY) AS readmitted,
    round(100.0 * readmitted / index_stays, 2) AS readmission_pct
FROM stay_next
WHERE cohort IS NOT NULL AND NOT died_in_hospital AND discharged <= data_end - INTERVAL 30 DAY
GROUP BY cohort
ORDER BY cohort;

-- name: readmission_hospital_wide
SELECT
    age >= 65 AS age_65_plus,
    count(*) AS index_stays,
    count(*) FILTER (next_admitted <= discharged + INTERVAL 30 DAY) AS readmitted,
    round(100.0 * readmitted / index_stays, 2) AS readmission_pct
FROM stay_next
WHERE NOT died_in_hospital AND discharged <= data_end - INTERVAL 30 DAY
GROUP BY ALL
ORDER BY age_65_plus;

-- name: readmission_per_hospital
SELECT
    ccn,
    cohort,
    count(*) AS index_stays,
    count(*) FILTER (next_admitted <= discharged + INTERVAL 30 DAY) AS readmitted
FROM stay_next
WHERE cohort IS NOT NULL AND NOT died_in_hospital AND discharged <= data_end - INTERVAL 30 DAY
GROUP BY ALL
ORDER BY ccn, cohort;

-- name: readmission_per_hospital_wide
-- Hospital-wide, per hospital: every stay (any age, any diagnosis) discharged alive at least 30
-- days before the data end is an index stay, readmitted as in readmission_per_cohort.
SELECT
    ccn,
    count(*) AS index_stays,
    count(*) FILTER (next_admitted <= discharged + INTERVAL 30 DAY) AS readmitted
FROM stay_next
WHERE NOT died_in_hospital AND discharged <= data_end - INTERVAL 30 DAY
GROUP BY ccn
ORDER BY ccn;

-- name: hai_per_hospital
-- Hospital-acquired infections: Conditions of a stay with an NHSN-event ICD-10-CM code, counted per
-- 1,000 patient days, and a SIR-like ratio = observed / (patient days / 1,000 x the incidence
-- of an SIR of 1.0), the latter from reference_data/hai_baselines.csv (2019, 2015 baseline).
WITH baseline(hai, pattern, per_1000_sir1) AS (
    VALUES ('CLABSI', '^T80\.21', 0.1143), ('CAUTI', '^T83\.51', 0.1282),
        ('SSI', '^T81\.4', 0.0565 + 0.0176), ('CDI', '^A04\.7', 0.6329),
        ('MRSA', '^(A41\.02|B95\.62)', 0.0621)
), hai AS (
    SELECT s.ccn, b.hai
    FROM condition AS c
    JOIN stay AS s ON c.encounter.reference = 'Encounter/' || s.id
    JOIN baseline AS b ON regexp_matches(c.code.coding[1].code, b.pattern)
    WHERE c.id <> s.condition_id
), days AS (
    SELECT ccn, sum(days) AS patient_days FROM stay GROUP BY ccn
)
SELECT
    d.ccn,
    b.hai,
    d.patient_days,
    count(h.ccn) AS infections,
    round(1000.0 * count(h.ccn) / d.patient_days, 4) AS per_1000_patient_days,
    round(count(h.ccn) / (d.patient_days / 1000.0 * b.per_1000_sir1), 3) AS sir_like
FROM days AS d
CROSS JOIN baseline AS b
LEFT JOIN hai AS h ON h.ccn = d.ccn AND h.hai = b.hai
GROUP BY d.ccn, b.hai, d.patient_days, b.per_1000_sir1
ORDER BY d.ccn, b.hai;

-- name: hai_outcomes
-- Stays with a hospital-acquired infection of each kind ('any': of at least one kind) against
-- stays with none: stays, deaths in hospital, in-hospital mortality and ALOS in days (exact:
-- discharge - admission), beside the attributable days and death odds ratios the generator
-- uses (docs/encounters.md).
WITH baseline(hai, pattern) AS (
    VALUES ('CLABSI', '^T80\.21'), ('CAUTI', '^T83\.51'), ('SSI', '^T81\.4'), ('CDI', '^A04\.7'),
        ('MRSA', '^(A41\.02|B95\.62)')
), kinds AS (
    SELECT s.id, list(DISTINCT b.hai) AS hais
    FROM condition AS c
    JOIN stay AS s ON c.encounter.reference = 'Encounter/' || s.id
    JOIN baseline AS b ON regexp_matches(c.code.coding[1].code, b.pattern)
    WHERE c.id <> s.condition_id
    GROUP BY s.id
), labelled AS (
    SELECT
        unnest(CASE WHEN k.hais IS NULL THEN ['none'] ELSE list_append(k.hais, 'any') END) AS hai,
        s.died_in_hospital,
        date_diff('second', s.admitted, s.discharged) / 86400 AS los
    FROM stay AS s
    LEFT JOIN kinds AS k USING (id)
)
SELECT
    hai,
    count(*) AS stays,
    count(*) FILTER (died_in_hospital) AS died_in_hospital,
    round(100.0 * count(*) FILTER (died_in_hospital) / count(*), 2) AS mortality_pct,
    round(avg(los), 2) AS alos_days
FROM labelled
GROUP BY hai
ORDER BY hai;

-- name: hai_onset_check
-- NHSN's hospital-onset rule: onset on day 3 or later (the admission day is day 1). Expect 0.
SELECT count(*) AS early_onsets
FROM condition AS c
JOIN stay AS s ON c.encounter.reference = 'Encounter/' || s.id
WHERE c.id <> s.condition_id
    AND date_diff('day', s.admitted::DATE, c.onsetDateTime::DATE) + 1 < 3;

-- name: stay_dangling_references
-- Encounters whose patient, hospital or principal Condition is missing from the layer (the stay
-- table keeps only stays where all three resolve), and Conditions of no Encounter. Expect 0, 0.
SELECT
    (SELECT count(*) FROM encounter) - (SELECT count(*) FROM stay) AS unresolved_encounters,
    (SELECT count(*) FROM condition AS c
        ANTI JOIN encounter AS e ON c.encounter.reference = 'Encounter/' || e.id)
        AS unresolved_conditions;

"""What the OMOP importer and exporter agree on about OMOP CDM v5.4: the fixed concepts, the
tables and columns read, and the importer's SQL, written once for DuckDB (a folder of files) and
PostgreSQL (a database URL): plain joins, CASE, COALESCE and ROW_NUMBER, nothing engine-specific.

Standard concepts are resolved through the instance's own `concept` table by vocabulary_id and
concept_code; the only fixed ids are OMOP's gender concepts (8507 MALE, 8532 FEMALE) and, when
an instance's `concept` lacks the Meas Value Operator concepts, the id of "=" (4172703).
"""

from __future__ import annotations

MALE, FEMALE = 8507, 8532
OPERATOR_EQUALS = 4172703  # Meas Value Operator "=" (SNOMED 276136004)
OPERATOR_DOMAIN = "Meas Value Operator"
LAB_TYPE = 32856  # Type Concept "Lab"
EHR_TYPE = 32817  # Type Concept "EHR"
OUTPATIENT_VISIT = 9202  # Visit "Outpatient Visit"
ICD10_VOCABULARIES = ("ICD10", "ICD10CM")
EVENT_TABLES = (  # (table, id, concept, day) of the tables index events are read from
    ("observation", "observation_id", "observation_concept_id", "observation_date"),
    ("procedure_occurrence", "procedure_occurrence_id", "procedure_concept_id", "procedure_date"),
)

# Table -> the columns the importer reads (any others are ignored).
REQUIRED = {
    "person": ("person_id", "gender_concept_id", "year_of_birth"),
    "observation_period": (
        "person_id", "observation_period_start_date", "observation_period_end_date",
    ),
    "measurement": (
        "measurement_id", "person_id", "measurement_concept_id", "measurement_date",
        "value_as_number",
    ),
    "concept": ("concept_id", "concept_name", "domain_id", "vocabulary_id", "concept_code"),
}  # fmt: skip
# Optional tables: each used when present, with these columns.
OPTIONAL = {
    "observation": ("observation_id", "person_id", "observation_concept_id", "observation_date"),
    "procedure_occurrence": (
        "procedure_occurrence_id", "person_id", "procedure_concept_id", "procedure_date",
    ),
    "condition_occurrence": (
        "person_id", "condition_concept_id", "condition_start_date",
    ),
    "concept_relationship": ("concept_id_1", "concept_id_2", "relationship_id"),
    "visit_occurrence": ("visit_occurrence_id", "care_site_id"),
    "care_site": ("care_site_id", "care_site_name"),
}  # fmt: skip
# Optional columns the importer uses when a table has them.
OPTIONAL_COLUMNS = {
    "person": ("month_of_birth", "day_of_birth", "birth_datetime"),
    "measurement": (
        "measurement_datetime", "unit_concept_id", "unit_source_value", "operator_concept_id",
        "visit_occurrence_id",
    ),
    "condition_occurrence": ("condition_source_value", "condition_source_concept_id"),
}  # fmt: skip

# Measurement exclusion reasons, in the order they are decided (the first that applies).
MEASUREMENT_REASONS = {
    "unknown_person": "the measurement's person is not in `person`",
    "unmapped_concept": "measurement_concept_id is not a LOINC concept the catalogue knows",
    "no_value": "no value_as_number",
    "comparator": "an operator other than '=' (<, <=, >=, >): not an exact value",
    "no_unit": "neither a UCUM unit_concept_id nor a unit_source_value",
    "undated": "neither measurement_datetime nor measurement_date",
    "duplicate": "the same person, concept, date-time, value and unit as an earlier row "
    "(lowest measurement_id kept)",
}


def literal(text: str) -> str:
    """A SQL string literal (standard quoting: ' doubled), the same in DuckDB and PostgreSQL."""
    return "'" + text.replace("'", "''") + "'"


def in_list(values: list[str]) -> str:
    return "(" + ", ".join(literal(v) for v in values) + ")" if values else "(NULL)"


def measurement_sql(t: dict[str, str], columns: dict[str, set[str]], loincs: list[str]) -> str:
    """Every measurement row with `reason` NULL (usable) or the first exclusion reason, in
    measurement_id order: `person_id, code, value, unit, sample_time, sample_date, lab, reason`.
    `t` names each table as the engine addresses it; `columns` says which optional ones exist."""
    has = columns["measurement"]

    def col(name: str, otherwise: str = "NULL") -> str:
        return f"m.{name}" if name in has else otherwise

    labs = "visit_occurrence" in t and "care_site" in t and "visit_occurrence_id" in has
    lab_join = (
        f"LEFT JOIN {t['visit_occurrence']} v ON v.visit_occurrence_id = m.visit_occurrence_id\n"
        f"  LEFT JOIN {t['care_site']} cs ON cs.care_site_id = v.care_site_id"
        if labs
        else ""
    )
    unit_join = (
        f"LEFT JOIN {t['concept']} u ON u.concept_id = m.unit_concept_id "
        "AND u.vocabulary_id = 'UCUM'"
        if "unit_concept_id" in has
        else ""
    )
    unit_code = "u.concept_code" if unit_join else "NULL"
    operator = col("operator_concept_id")
    return f"""
WITH ops AS (
  SELECT concept_id, concept_name FROM {t["concept"]} WHERE domain_id = {literal(OPERATOR_DOMAIN)}
), classified AS (
  SELECT
    m.measurement_id,
    m.person_id,
    lc.concept_code AS code,
    CAST(m.value_as_number AS DOUBLE PRECISION) AS value,
    COALESCE({unit_code}, NULLIF(TRIM({col("unit_source_value")}), '')) AS unit,
    {col("measurement_datetime")} AS sample_time,
    m.measurement_date AS sample_date,
    {"cs.care_site_name" if labs else "CAST(NULL AS VARCHAR)"} AS lab,
    CASE
      WHEN p.person_id IS NULL THEN 'unknown_person'
      WHEN lc.concept_code IS NULL THEN 'unmapped_concept'
      WHEN m.value_as_number IS NULL THEN 'no_value'
      WHEN {operator} IS NOT NULL AND {operator} <> 0 AND NOT (
        COALESCE(op.concept_name, CASE WHEN {operator} = {OPERATOR_EQUALS} THEN '=' END) = '='
      ) THEN 'comparator'
      WHEN {unit_code} IS NULL AND NULLIF(TRIM({col("unit_source_value")}), '') IS NULL
        THEN 'no_unit'
      WHEN {col("measurement_datetime")} IS NULL AND m.measurement_date IS NULL THEN 'undated'
    END AS reason
  FROM {t["measurement"]} m
  LEFT JOIN (SELECT DISTINCT person_id FROM {t["person"]}) p ON p.person_id = m.person_id
  LEFT JOIN {t["concept"]} lc ON lc.concept_id = m.measurement_concept_id
    AND lc.vocabulary_id = 'LOINC' AND lc.concept_code IN {in_list(loincs)}
  LEFT JOIN ops op ON op.concept_id = {operator}
  {unit_join}
  {lab_join}
), ranked AS (
  SELECT classified.*, ROW_NUMBER() OVER (
    PARTITION BY reason, person_id, code, COALESCE(sample_time, sample_date), value, unit
    ORDER BY measurement_id
  ) AS copy_number
  FROM classified
)
SELECT person_id, code, value, unit, sample_time, sample_date, lab,
  CASE WHEN reason IS NULL AND copy_number > 1 THEN 'duplicate' ELSE reason END AS reason
FROM ranked
ORDER BY measurement_id
"""


def people_sql(t: dict[str, str], columns: dict[str, set[str]]) -> str:
    """One row per person: ids, sex (male/female, else the gender concept's name) and birth."""
    has = columns["person"]

    def col(name: str) -> str:
        return f"p.{name}" if name in has else "NULL"

    return f"""
SELECT p.person_id,
  CASE WHEN p.gender_concept_id = {MALE} THEN 'male'
       WHEN p.gender_concept_id = {FEMALE} THEN 'female'
       ELSE LOWER(g.concept_name) END AS gender,
  p.year_of_birth, {col("month_of_birth")} AS month_of_birth,
  {col("day_of_birth")} AS day_of_birth, {col("birth_datetime")} AS birth_datetime
FROM {t["person"]} p
LEFT JOIN {t["concept"]} g ON g.concept_id = p.gender_concept_id
ORDER BY p.person_id
"""


def events_sql(t: dict[str, str], keys: list[tuple[str, str]]) -> str:
    """Index events: observation and procedure rows whose concept (vocabulary_id, concept_code)
    is in `keys`; `referral_id, person_id, index_date, vocabulary_id, concept_code`."""
    wanted = " OR ".join(
        f"(c.vocabulary_id = {literal(v)} AND c.concept_code = {literal(k)})" for v, k in keys
    )
    parts = [
        f"SELECT e.{ident} AS referral_id, e.person_id, e.{day} AS index_date, "
        f"c.vocabulary_id, c.concept_code, {order} AS source_order\n"
        f"FROM {t[table]} e JOIN {t['concept']} c ON c.concept_id = e.{concept}\n"
        f"WHERE {wanted or 'FALSE'}"
        for order, (table, ident, concept, day) in enumerate(EVENT_TABLES)
        if table in t
    ]
    return "\nUNION ALL\n".join(parts) + "\nORDER BY source_order, referral_id"


def conditions_sql(t: dict[str, str], columns: dict[str, set[str]]) -> str:
    """Condition rows that may be cancers (a candidate ICD-10 code starting with C), with their
    three candidate codes: the source concept's ICD-10 code, condition_source_value, and the
    (lowest) ICD-10 code whose concept "Maps to" condition_concept_id."""
    has = columns["condition_occurrence"]
    vocabularies = in_list(list(ICD10_VOCABULARIES))
    source_value = "TRIM(co.condition_source_value)" if "condition_source_value" in has else "NULL"
    source_join = (
        f"LEFT JOIN {t['concept']} sc ON sc.concept_id = co.condition_source_concept_id "
        f"AND sc.vocabulary_id IN {vocabularies}"
        if "condition_source_concept_id" in has
        else ""
    )
    source_code = "sc.concept_code" if source_join else "NULL"
    mapped_join = (
        f"""LEFT JOIN (
    SELECT r.concept_id_2 AS concept_id, MIN(ic.concept_code) AS icd10
    FROM {t["concept_relationship"]} r
    JOIN {t["concept"]} ic ON ic.concept_id = r.concept_id_1
    WHERE r.relationship_id = 'Maps to' AND ic.vocabulary_id IN {vocabularies}
      AND UPPER(ic.concept_code) LIKE 'C%'
    GROUP BY r.concept_id_2
  ) mp ON mp.concept_id = co.condition_concept_id"""
        if "concept_relationship" in t
        else ""
    )
    mapped = "mp.icd10" if mapped_join else "NULL"
    return f"""
SELECT * FROM (
  SELECT co.person_id, co.condition_start_date AS condition_date,
    {source_code} AS source_icd10, {source_value} AS source_value, {mapped} AS mapped_icd10,
    CASE WHEN p.person_id IS NULL THEN 1 ELSE 0 END AS unknown_person
  FROM {t["condition_occurrence"]} co
  LEFT JOIN (SELECT DISTINCT person_id FROM {t["person"]}) p ON p.person_id = co.person_id
  {source_join}
  {mapped_join}
) candidates
WHERE UPPER(source_icd10) LIKE 'C%' OR UPPER(source_value) LIKE 'C%'
   OR UPPER(mapped_icd10) LIKE 'C%'
"""


def periods_sql(t: dict[str, str]) -> str:
    return (
        "SELECT person_id, observation_period_start_date AS start, "
        f'observation_period_end_date AS "end" FROM {t["observation_period"]}'
    )

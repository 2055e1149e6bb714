-- schema_version: 1
--
-- The warehouse schema. `persona_icm.warehouse.open_warehouse` runs this whole file in one
-- transaction whenever its text changed since the last time it was applied to a database, then
-- records (version, sha256) in schema_version. So every statement here must be idempotent:
-- CREATE TABLE IF NOT EXISTS, CREATE OR REPLACE VIEW, ALTER TABLE ... ADD COLUMN IF NOT EXISTS.
-- To extend: append statements below (under a comment naming the part that owns them) and bump
-- the version number on the first line.

-- ---------------------------------------------------------------- GOQA (goqa.py, warehouse.py)

-- One row per ingested GOQA file (identified by the sha256 of its bytes).
CREATE TABLE IF NOT EXISTS goqa_sources (
    source_sha256         VARCHAR PRIMARY KEY,
    origin                VARCHAR NOT NULL,   -- path or hf://datasets/... it was read from
    parser_version        INTEGER NOT NULL,
    n_rows                INTEGER NOT NULL,   -- data rows in the file
    n_questions           INTEGER NOT NULL,   -- rows loaded
    n_selections          INTEGER NOT NULL,   -- (question, country, option) shares loaded
    n_empty_question_rows INTEGER NOT NULL,   -- rows skipped because the question is empty
    n_share_warnings      INTEGER NOT NULL,   -- (question, country) whose shares do not sum to ~1
    ingested_at           TIMESTAMP NOT NULL
);

-- One row per GOQA row. question_id is a stable hash of (question, options, source), so the
-- same question has the same id in every file that holds it.
CREATE TABLE IF NOT EXISTS goqa_questions (
    source_sha256 VARCHAR NOT NULL,
    question_id   VARCHAR NOT NULL,
    row_idx       INTEGER NOT NULL,   -- 0-based data row in the file
    question      VARCHAR NOT NULL,
    options       VARCHAR[] NOT NULL, -- option texts (numeric options as text: 1.0 -> '1')
    n_options     INTEGER NOT NULL,
    source        VARCHAR NOT NULL,   -- GOQA's own column: GAS (Pew) or WVS
    PRIMARY KEY (source_sha256, question_id)
);

CREATE TABLE IF NOT EXISTS goqa_selections (
    source_sha256 VARCHAR NOT NULL,
    question_id   VARCHAR NOT NULL,
    country       VARCHAR NOT NULL,
    option_idx    INTEGER NOT NULL,   -- 0-based index into goqa_questions.options
    share         DOUBLE NOT NULL,    -- as in the file (not renormalised)
    PRIMARY KEY (source_sha256, question_id, country, option_idx)
);

-- ---------------------------------------------------------------- claims and splits (claims.py)

-- One row per built dataset; dataset_id fingerprints everything that shaped it (params).
CREATE TABLE IF NOT EXISTS datasets (
    dataset_id    VARCHAR PRIMARY KEY,
    source_sha256 VARCHAR NOT NULL,
    dataset       VARCHAR NOT NULL,   -- 'all' or 'binary'
    countries     VARCHAR[] NOT NULL,
    split_seed    INTEGER NOT NULL,
    params        JSON NOT NULL,      -- the DataConfig fields and fingerprints that made it
    n_claims      INTEGER NOT NULL,
    report        JSON NOT NULL       -- counts of skipped groups, unmatched list entries, ...
);

CREATE TABLE IF NOT EXISTS claims (
    dataset_id  VARCHAR NOT NULL,
    claim_id    VARCHAR NOT NULL,     -- '{question_id}:{country}:{option_idx}'
    question_id VARCHAR NOT NULL,
    country     VARCHAR NOT NULL,
    option_idx  INTEGER NOT NULL,
    option      VARCHAR NOT NULL,
    share       DOUBLE NOT NULL,
    label       TINYINT NOT NULL,     -- gold: 1 = the option is the most popular answer
    group_id    VARCHAR NOT NULL,     -- '{question_id}:{country}'
    tie         BOOLEAN NOT NULL,     -- the top share was shared; lowest option index won
    PRIMARY KEY (dataset_id, claim_id)
);

CREATE TABLE IF NOT EXISTS splits (
    dataset_id VARCHAR NOT NULL,
    split_seed INTEGER NOT NULL,
    country    VARCHAR NOT NULL,
    claim_id   VARCHAR NOT NULL,
    split      VARCHAR NOT NULL,      -- 'train' or 'test'; claims over the caps have no row
    position   INTEGER NOT NULL,      -- order within (country, split): shuffled questions, option order
    PRIMARY KEY (dataset_id, claim_id)
);

CREATE OR REPLACE VIEW split_sizes AS
SELECT s.dataset_id, s.country, s.split,
       count(*) AS n_claims, count(DISTINCT c.group_id) AS n_groups, sum(c.tie::INTEGER) AS n_ties
FROM splits s JOIN claims c USING (dataset_id, claim_id)
GROUP BY ALL
ORDER BY ALL;

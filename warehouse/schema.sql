-- schema_version: 14
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

-- A dataset of data.countries 'all' (claims.select_countries): every country of the GOQA file, its
-- usable question groups under the dataset's question selection, and whether it qualified (else why not).
CREATE TABLE IF NOT EXISTS dataset_countries (
    dataset_id VARCHAR NOT NULL,
    country    VARCHAR NOT NULL,
    n_groups   INTEGER NOT NULL,      -- usable (question, country) groups before the split and the caps
    selected   BOOLEAN NOT NULL,
    reason     VARCHAR,               -- why it was left out (NULL when selected)
    PRIMARY KEY (dataset_id, country)
);

-- ---------------------------------------------------------------- results (tasks/, flows/, charts.py)

-- Written by the flow process only: one transaction per (run, country, phase) that first deletes
-- that key's rows, so re-running replaces. Every row carries run_id. The views below are the only
-- definition of every accuracy number (from `predictions`); the 95% intervals are the bootstrap
-- of persona_icm/metrics.py over the view question_outcomes, stored in `metrics` and joined in.

CREATE TABLE IF NOT EXISTS runs (
    run_id        VARCHAR PRIMARY KEY,
    flow_run_id   VARCHAR,
    preset        VARCHAR NOT NULL,
    config_json   JSON NOT NULL,             -- the full RunConfig
    base_model    VARCHAR NOT NULL,          -- backend:name
    chat_model    VARCHAR,
    countries     VARCHAR[] NOT NULL,
    dataset_id    VARCHAR NOT NULL,          -- the data fingerprint: datasets.dataset_id
    code_version  VARCHAR NOT NULL,          -- git commit (+ "-dirty")
    started_at    TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ,
    timings       JSON,                      -- seconds per phase
    status        VARCHAR NOT NULL,          -- running | completed | failed | interrupted (owner process gone)
    -- the process that runs (ran) the run (run_status.py): a `running` row whose owner is gone is
    -- `interrupted`; interrupted_attempts counts earlier attempts of this run_id that died unfinished
    host                  VARCHAR,
    pid                   INTEGER,
    pid_started           DOUBLE,            -- the owner's start time (epoch s): PIDs get reused
    interrupted_attempts  INTEGER DEFAULT 0,
    -- a study (base_models): its runs, one per base model, share study_id; a one-model run's is its run_id
    study_id                      VARCHAR,
    base_model_parameters         BIGINT,    -- persona_icm/model_sizes.py; NULL: unknown
    base_model_parameters_source  VARCHAR    -- registered | counted from its safetensors | why it is unknown
);

-- persona_icm/icm/search.py LABELS_SCHEMA: the final labelling of one search.
CREATE TABLE IF NOT EXISTS icm_labels (
    run_id             VARCHAR NOT NULL,
    country            VARCHAR NOT NULL,
    icm_seed           INTEGER NOT NULL,
    claim_id           VARCHAR NOT NULL,
    group_id           VARCHAR NOT NULL,
    label              TINYINT,              -- NULL: the search never labelled it
    context_rank       INTEGER,              -- position in the final context order
    entered_iteration  INTEGER,              -- iteration it joined the pool (0 = seed)
    score              DOUBLE,               -- leave-one-out s(x | D \ {x}) under the final labelling
    gold               TINYINT NOT NULL,     -- monitoring only; never read by the search
    PRIMARY KEY (run_id, country, icm_seed, claim_id)
);

-- persona_icm/icm/search.py TRACE_SCHEMA: one row per search iteration.
CREATE TABLE IF NOT EXISTS icm_trace (
    run_id          VARCHAR NOT NULL,
    country         VARCHAR NOT NULL,
    icm_seed        INTEGER NOT NULL,
    iteration       INTEGER NOT NULL,        -- 0: the seeded pool after its ConsistencyFix
    claim_id        VARCHAR,                 -- the sampled claim
    previous_label  TINYINT,
    score           DOUBLE,                  -- s(x | D \ {x}) behind the proposal
    proposal        TINYINT,
    changed         BOOLEAN,
    fixes           SMALLINT,
    delta_U         DOUBLE,
    accepted        BOOLEAN,
    T               DOUBLE,
    U               DOUBLE NOT NULL,
    P               DOUBLE NOT NULL,
    I               INTEGER NOT NULL,
    pool_size       INTEGER,
    accepted_total  INTEGER,
    train_accuracy  DOUBLE,                  -- labels vs gold: monitoring only
    backend_calls   BIGINT,                  -- model work of this iteration
    prompts         BIGINT,
    prompt_tokens   BIGINT,
    cached_tokens   BIGINT,
    PRIMARY KEY (run_id, country, icm_seed, iteration)
);

-- persona_icm/icm/diagnosis.py ENERGY_SCHEMA: U, P and I of gold, ICM's final labels and gold
-- flipped, on the claims ICM labelled, in its final context order, under the search's objective.
CREATE TABLE IF NOT EXISTS icm_diagnosis (
    run_id          VARCHAR NOT NULL,
    country         VARCHAR NOT NULL,
    icm_seed        INTEGER NOT NULL,
    labelling       VARCHAR NOT NULL,        -- gold | icm | gold_flipped
    U               DOUBLE NOT NULL,
    P               DOUBLE NOT NULL,
    I               INTEGER NOT NULL,
    claims          INTEGER NOT NULL,        -- claims labelled (ICM's final pool)
    label_accuracy  DOUBLE NOT NULL,         -- the labelling against gold
    PRIMARY KEY (run_id, country, icm_seed, labelling)
);

-- persona_icm/icm/diagnosis.py GROUP_SCHEMA: per question group with both claims labelled, gold's
-- leave-one-out scores (every other claim's gold label as context) of its True and its False claim.
CREATE TABLE IF NOT EXISTS icm_diagnosis_groups (
    run_id             VARCHAR NOT NULL,
    country            VARCHAR NOT NULL,
    icm_seed           INTEGER NOT NULL,
    group_id           VARCHAR NOT NULL,
    true_claim_id      VARCHAR NOT NULL,
    true_score         DOUBLE NOT NULL,
    other_claim_id     VARCHAR NOT NULL,
    other_score        DOUBLE NOT NULL,
    gold_ranked_first  BOOLEAN NOT NULL,     -- true_score > other_score
    PRIMARY KEY (run_id, country, icm_seed, group_id)
);

-- One row per (run, country, ICM seed): the diagnosis and its verdict (the one definition of the
-- rule). U(ICM) < U(gold): the search stopped below an optimum its objective knows of; otherwise
-- the objective itself ranks ICM's labels at least as high as gold.
CREATE OR REPLACE VIEW icm_diagnosis_verdict AS
WITH energies AS (
    SELECT run_id, country, icm_seed,
           any_value(claims) AS claims,
           any_value(label_accuracy) FILTER (WHERE labelling = 'icm') AS icm_label_accuracy,
           any_value(U) FILTER (WHERE labelling = 'gold') AS U_gold,
           any_value(P) FILTER (WHERE labelling = 'gold') AS P_gold,
           any_value(I) FILTER (WHERE labelling = 'gold') AS I_gold,
           any_value(U) FILTER (WHERE labelling = 'icm') AS U_icm,
           any_value(P) FILTER (WHERE labelling = 'icm') AS P_icm,
           any_value(I) FILTER (WHERE labelling = 'icm') AS I_icm,
           any_value(U) FILTER (WHERE labelling = 'gold_flipped') AS U_flipped,
           any_value(P) FILTER (WHERE labelling = 'gold_flipped') AS P_flipped,
           any_value(I) FILTER (WHERE labelling = 'gold_flipped') AS I_flipped
    FROM icm_diagnosis GROUP BY run_id, country, icm_seed
), ranking AS (
    SELECT run_id, country, icm_seed, count(*) AS groups,
           count(*) FILTER (WHERE gold_ranked_first) AS gold_ranked_first
    FROM icm_diagnosis_groups GROUP BY run_id, country, icm_seed
)
SELECT e.*, coalesce(r.groups, 0) AS groups, coalesce(r.gold_ranked_first, 0) AS gold_ranked_first,
       CASE WHEN e.icm_label_accuracy = 1 THEN 'ICM''s labels are gold'
            WHEN e.U_icm < e.U_gold THEN 'search shortfall'
            ELSE 'objective prefers other labels' END AS verdict
FROM energies e LEFT JOIN ranking r USING (run_id, country, icm_seed);

-- The registered evaluation methods (persona_icm/methods.py), one row per stored method name.
-- persona_icm.warehouse fills it from the registry on every read-write open (replacing the rows
-- in one transaction when they differ), so the views below take what a method is from here.
CREATE TABLE IF NOT EXISTS methods (
    method           VARCHAR PRIMARY KEY,    -- as stored in predictions.method
    position         INTEGER NOT NULL,       -- registration order: the charts' order
    label            VARCHAR NOT NULL,       -- chart label
    colour           VARCHAR NOT NULL,       -- chart colour
    config_name      VARCHAR NOT NULL,       -- the eval.methods name that runs it
    uses_icm_labels  BOOLEAN NOT NULL,
    uses_chat_model  BOOLEAN NOT NULL,
    uses_demos       BOOLEAN NOT NULL,       -- false: zero-shot
    in_curve         BOOLEAN NOT NULL        -- in accuracy_vs_examples
);

-- One row per test claim per evaluated prompt set (persona_icm/evaluate.py PREDICTION_SCHEMA).
CREATE TABLE IF NOT EXISTS predictions (
    run_id      VARCHAR NOT NULL,
    country     VARCHAR NOT NULL,
    method      VARCHAR NOT NULL,            -- a row of `methods`: icm | golden | random_matched | zero_shot_base | ...
    experiment  VARCHAR NOT NULL,            -- main (headline: whole pool / zero-shot) | curve (sub-sampled demos)
    n_demos     INTEGER NOT NULL,
    "repeat"    INTEGER NOT NULL,            -- demo order index
    icm_seed    INTEGER NOT NULL,            -- the ICM search (seed) whose demo pool was used; -1: none (zero-shot)
    claim_id    VARCHAR NOT NULL,
    group_id    VARCHAR NOT NULL,
    score       DOUBLE NOT NULL,             -- log P(" True") - log P(" False")
    pred        TINYINT NOT NULL,
    gold        TINYINT NOT NULL,
    PRIMARY KEY (run_id, country, method, experiment, n_demos, "repeat", icm_seed, claim_id)
);

-- The exact demonstrations of every prompt, in prompt order.
CREATE TABLE IF NOT EXISTS demos (
    run_id      VARCHAR NOT NULL,
    country     VARCHAR NOT NULL,
    method      VARCHAR NOT NULL,
    experiment  VARCHAR NOT NULL,
    n_demos     INTEGER NOT NULL,
    "repeat"    INTEGER NOT NULL,
    icm_seed    INTEGER NOT NULL,
    position    INTEGER NOT NULL,
    claim_id    VARCHAR NOT NULL,
    label       TINYINT NOT NULL,
    gold        TINYINT NOT NULL,
    PRIMARY KEY (run_id, country, method, experiment, n_demos, "repeat", icm_seed, position)
);

-- persona_icm/metrics.py output: the 95% bootstrap intervals of every results_by_country cell
-- (country 'ALL': of every results_aggregated cell). The point estimates are the views' alone.
-- No primary key: n_demos is NULL in a pooled row whose countries differ in pool size; the
-- writer replaces a (run, country) at a time, so a cell is never written twice.
CREATE TABLE IF NOT EXISTS metrics (
    run_id             VARCHAR NOT NULL,
    country            VARCHAR NOT NULL,
    method             VARCHAR NOT NULL,
    experiment         VARCHAR NOT NULL,
    n_demos            INTEGER,
    n_icm_seeds        INTEGER,
    claim_acc_ci_low   DOUBLE,
    claim_acc_ci_high  DOUBLE,
    group_acc_ci_low   DOUBLE,
    group_acc_ci_high  DOUBLE
);

CREATE TABLE IF NOT EXISTS model_calls (
    run_id         VARCHAR NOT NULL,
    country        VARCHAR NOT NULL,
    step           VARCHAR NOT NULL,         -- the flow phase that made the call: icm | eval | chat
    phase          VARCHAR NOT NULL,         -- the scorer's phase label (e.g. eval:golden)
    model          VARCHAR NOT NULL,
    call_index     INTEGER NOT NULL,
    n_prompts      INTEGER NOT NULL,
    prompt_tokens  BIGINT NOT NULL,
    cached_tokens  BIGINT,
    wall_seconds   DOUBLE NOT NULL
);

-- The one definition of both accuracies, per evaluated prompt set (a demo order) and test
-- question: claims right (pred = gold) and the group credit: 1 when the gold-True option scores
-- highest, 1/(number tied) when it ties for the highest (the expected accuracy of breaking the tie
-- at random; option-prior scores tie often). metrics.py resamples these rows for the intervals.
CREATE OR REPLACE VIEW question_outcomes AS
WITH tops AS (
    SELECT *, score = max(score) OVER (
        PARTITION BY run_id, country, method, experiment, n_demos, "repeat", icm_seed, group_id) AS is_top
    FROM predictions
)
SELECT run_id, country, method, experiment, n_demos, "repeat", icm_seed, group_id,
       count(*) FILTER (WHERE pred = gold)::DOUBLE AS claims_correct,
       count(*)::DOUBLE AS n_claims,
       count(*) FILTER (WHERE is_top AND gold = 1) / count(*) FILTER (WHERE is_top) AS group_correct
FROM tops GROUP BY ALL;

-- One row per evaluated prompt set: claim accuracy (claims pooled) and group accuracy (mean credit).
CREATE OR REPLACE VIEW accuracy AS
SELECT run_id, country, method, experiment, n_demos, "repeat", icm_seed,
       sum(n_claims)::INTEGER AS n_claims,
       count(*)::INTEGER AS n_groups,
       sum(claims_correct) / sum(n_claims) AS claim_accuracy,
       avg(group_correct) AS group_accuracy
FROM question_outcomes GROUP BY ALL;

-- Share of demonstrations whose label equals gold, per results_by_country cell: for icm, ICM's
-- label accuracy; random_matched equals it by construction; golden is 1.
CREATE OR REPLACE VIEW demo_label_accuracy AS
SELECT run_id, country, method, experiment,
       CASE WHEN min(n_demos) = max(n_demos) THEN min(n_demos) END AS n_demos,
       avg((label = gold)::INTEGER) AS demo_label_accuracy
FROM demos
GROUP BY run_id, country, method, experiment, CASE WHEN experiment = 'main' THEN NULL ELSE n_demos END;

-- Per (run, country, method, experiment, n_demos): mean and std over demo orders and ICM
-- searches (n_seeds of them: icm.seeds), with the 95% bootstrap interval over test questions,
-- orders and seeds from `metrics`. "main" pools the seeds whatever their pool sizes (n_demos is
-- then NULL when they differ); "curve" cells are per demo count.
CREATE OR REPLACE VIEW results_by_country AS
WITH cells AS (
    SELECT run_id, country, method, experiment,
           CASE WHEN min(n_demos) = max(n_demos) THEN min(n_demos) END AS n_demos,
           count(DISTINCT icm_seed) FILTER (WHERE icm_seed >= 0)::INTEGER AS n_seeds,
           count(*)::INTEGER AS n_orders,
           any_value(n_claims) AS n_test_claims,
           any_value(n_groups) AS n_test_groups,
           avg(claim_accuracy) AS accuracy,
           stddev_samp(claim_accuracy) AS accuracy_std,
           avg(group_accuracy) AS group_accuracy
    FROM accuracy
    GROUP BY run_id, country, method, experiment, CASE WHEN experiment = 'main' THEN NULL ELSE n_demos END
)
SELECT c.run_id, c.country, c.method, c.experiment, c.n_demos, c.n_seeds, c.n_orders, c.n_test_claims, c.n_test_groups,
       c.accuracy, c.accuracy_std,
       m.claim_acc_ci_low AS ci_low, m.claim_acc_ci_high AS ci_high,
       c.group_accuracy, m.group_acc_ci_low AS group_ci_low, m.group_acc_ci_high AS group_ci_high,
       d.demo_label_accuracy
FROM cells c
LEFT JOIN metrics m
  ON m.run_id = c.run_id AND m.country = c.country AND m.method = c.method
 AND m.experiment = c.experiment AND m.n_demos IS NOT DISTINCT FROM c.n_demos
LEFT JOIN demo_label_accuracy d
  ON d.run_id = c.run_id AND d.country = c.country AND d.method = c.method
 AND d.experiment = c.experiment AND d.n_demos IS NOT DISTINCT FROM c.n_demos;

-- Countries pooled, each weighted by its test size (claims for claim accuracy, questions for
-- group accuracy), over the cells every country of the run has. "main": each method's headline
-- setting (pool sizes may differ by country: n_demos is then NULL). "curve": the demo methods per
-- demo count, main and curve rows together. Mean and std over demo orders (each order pooled over
-- the countries); the 95% interval comes from `metrics` (country 'ALL').
CREATE OR REPLACE VIEW results_aggregated AS
WITH n_countries AS (
    SELECT run_id, count(DISTINCT country) AS n FROM predictions GROUP BY run_id
),
cells AS (
    SELECT *, 'main' AS cell, NULL::INTEGER AS cell_n_demos FROM accuracy WHERE experiment = 'main'
    UNION ALL
    SELECT *, 'curve', n_demos FROM accuracy
    WHERE n_demos > 0 AND method NOT IN (SELECT method FROM methods WHERE NOT uses_demos)
),
orders AS (
    SELECT run_id, method, cell, cell_n_demos, icm_seed, "repeat",
           count(DISTINCT country) AS n_countries,
           CASE WHEN min(n_demos) = max(n_demos) THEN min(n_demos) END AS n_demos,
           sum(n_claims)::INTEGER AS n_test_claims,
           sum(claim_accuracy * n_claims) / sum(n_claims) AS accuracy,
           sum(group_accuracy * n_groups) / sum(n_groups) AS group_accuracy
    FROM cells GROUP BY run_id, method, cell, cell_n_demos, icm_seed, "repeat"
),
pooled AS (
    SELECT run_id, method, cell AS experiment, cell_n_demos,
           max(n_countries) AS n_countries,
           CASE WHEN min(n_demos) = max(n_demos) THEN min(n_demos) END AS n_demos,
           max(n_test_claims) AS n_test_claims,
           count(*)::INTEGER AS n_orders,
           avg(accuracy) AS accuracy, stddev_samp(accuracy) AS accuracy_std,
           avg(group_accuracy) AS group_accuracy, stddev_samp(group_accuracy) AS group_accuracy_std
    FROM orders GROUP BY run_id, method, cell, cell_n_demos
)
SELECT p.run_id, p.method, p.experiment, p.n_demos, p.n_countries::INTEGER AS n_countries,
       p.n_test_claims, p.accuracy,
       m.claim_acc_ci_low AS ci_low, m.claim_acc_ci_high AS ci_high,
       p.group_accuracy, m.group_acc_ci_low AS group_ci_low, m.group_acc_ci_high AS group_ci_high,
       p.accuracy_std, p.group_accuracy_std, p.n_orders
FROM pooled p
JOIN n_countries n ON n.run_id = p.run_id AND p.n_countries = n.n
LEFT JOIN metrics m
  ON m.run_id = p.run_id AND m.country = 'ALL' AND m.method = p.method
 AND m.experiment = p.experiment AND m.n_demos IS NOT DISTINCT FROM p.n_demos;

-- Per ICM search: the headline accuracy of each seed (mean over demo orders), for the per-seed
-- spread of a run with several icm.seeds. Zero-shot methods (no ICM run) have icm_seed -1.
CREATE OR REPLACE VIEW accuracy_by_seed AS
SELECT run_id, country, method, experiment, n_demos, icm_seed,
       count(*)::INTEGER AS n_orders, avg(claim_accuracy) AS accuracy, avg(group_accuracy) AS group_accuracy
FROM accuracy GROUP BY ALL;

-- The headline of every run: each method's "main" setting (whole pool as demos, or zero-shot)
-- per country, and the countries pooled as country 'ALL'. The charts, latest_run_summary.sql and
-- compare_with_published.sql read this view.
CREATE OR REPLACE VIEW headline AS
SELECT run_id, country, method, n_demos, n_seeds, n_orders, n_test_claims, accuracy, accuracy_std, ci_low, ci_high,
       group_accuracy, group_ci_low, group_ci_high, demo_label_accuracy
FROM results_by_country WHERE experiment = 'main'
UNION ALL BY NAME
SELECT run_id, 'ALL' AS country, method, n_demos, n_orders, n_test_claims, accuracy, accuracy_std, ci_low, ci_high,
       group_accuracy, group_ci_low, group_ci_high
FROM results_aggregated WHERE experiment = 'main';

-- Accuracy against the number of demonstrations for the labelled-demo methods, per country
-- (the largest point is the headline "main" evaluation with the whole pool), and as country
-- 'ALL' the test-size-weighted aggregate over the demo counts every country has, plus the
-- countries' whole pools pooled, drawn at their mean pool size.
CREATE OR REPLACE VIEW accuracy_vs_examples AS
SELECT run_id, country, method, experiment, n_demos, n_orders, accuracy, accuracy_std, ci_low, ci_high,
       group_accuracy, group_ci_low, group_ci_high
FROM results_by_country
WHERE method IN (SELECT method FROM methods WHERE in_curve) AND n_demos > 0
UNION ALL
SELECT a.run_id, 'ALL' AS country, a.method, a.experiment, coalesce(a.n_demos, p.mean_pool)::INTEGER AS n_demos,
       a.n_orders, a.accuracy, a.accuracy_std, a.ci_low, a.ci_high, a.group_accuracy, a.group_ci_low, a.group_ci_high
FROM results_aggregated a
LEFT JOIN (
    SELECT run_id, method, round(avg(n_demos)) AS mean_pool
    FROM results_by_country WHERE experiment = 'main' GROUP BY run_id, method
) p ON p.run_id = a.run_id AND p.method = a.method
WHERE (a.experiment = 'curve' OR (a.experiment = 'main' AND a.n_demos IS NULL))  -- equal pools: the curve has them
  AND a.method IN (SELECT method FROM methods WHERE in_curve);

-- ---------------------------------------------------------------- reference numbers (docs/method.md)

-- The persona-elicitation fork's headline test accuracies (%), Llama-3.1-70B base, as published;
-- country 'ALL' is its test-size-weighted aggregate. For comparison only (view published_comparison,
-- queries/compare_with_published.sql). The binary 'ALL' row is the "aggregated" entry of the fork's
-- src/results/icm_binary_dataset_K1000.json (its README shows it as a figure only): 3 x 28 test
-- claims, so the plain mean of the three countries (icm 0.7405, golden 0.7750, chat 0.7500,
-- base 0.6548).
CREATE OR REPLACE VIEW published_results AS
SELECT dataset, country, method, accuracy_pct::DOUBLE AS accuracy_pct FROM (VALUES
    ('binary', 'United States', 'icm', 81.4), ('binary', 'France', 'icm', 68.6), ('binary', 'Japan', 'icm', 72.1),
    ('binary', 'United States', 'golden', 75.7), ('binary', 'France', 'golden', 75.4), ('binary', 'Japan', 'golden', 81.4),
    ('binary', 'United States', 'zero_shot_chat', 67.9), ('binary', 'France', 'zero_shot_chat', 75.0), ('binary', 'Japan', 'zero_shot_chat', 82.1),
    ('binary', 'United States', 'zero_shot_base', 71.4), ('binary', 'France', 'zero_shot_base', 67.9), ('binary', 'Japan', 'zero_shot_base', 57.1),
    ('all', 'United States', 'icm', 79.2), ('all', 'France', 'icm', 85.0), ('all', 'Japan', 'icm', 81.6),
    ('all', 'United States', 'golden', 83.4), ('all', 'France', 'golden', 89.8), ('all', 'Japan', 'golden', 81.6),
    ('all', 'United States', 'zero_shot_chat', 77.2), ('all', 'France', 'zero_shot_chat', 85.6), ('all', 'Japan', 'zero_shot_chat', 82.0),
    ('all', 'United States', 'zero_shot_base', 74.0), ('all', 'France', 'zero_shot_base', 76.0), ('all', 'Japan', 'zero_shot_base', 72.0),
    ('binary', 'ALL', 'icm', 74.0), ('binary', 'ALL', 'golden', 77.5), ('binary', 'ALL', 'zero_shot_chat', 75.0), ('binary', 'ALL', 'zero_shot_base', 65.5),
    ('all', 'ALL', 'icm', 81.9), ('all', 'ALL', 'golden', 84.9), ('all', 'ALL', 'zero_shot_chat', 81.6), ('all', 'ALL', 'zero_shot_base', 74.0)
) AS t(dataset, country, method, accuracy_pct);

-- Each run that repeats the fork's experiment beside the fork's published numbers: a run whose
-- data.protocol is 'fork' (a config without the key predates it and used the 'balanced' rule),
-- whose dataset the fork published, and whose countries include every country published for it.
-- One row per published (country, method): this run's headline claim accuracy and its 95%
-- interval (%), and whether the published number falls inside that interval. The pooled 'ALL'
-- row only when the run has exactly the fork's countries (otherwise the pools differ). A method
-- the run did not evaluate keeps its row, with verdict 'not evaluated'.
CREATE OR REPLACE VIEW published_comparison AS
WITH run_data AS (
    SELECT run_id, config_json->>'$.data.dataset' AS dataset,
           coalesce(config_json->>'$.data.protocol', 'balanced') AS protocol
    FROM runs
),
run_countries AS (
    SELECT run_id, list(DISTINCT country) AS countries FROM headline WHERE country <> 'ALL' GROUP BY run_id
),
published_countries AS (
    SELECT dataset, list(DISTINCT country) AS countries FROM published_results WHERE country <> 'ALL' GROUP BY dataset
),
comparable AS (
    SELECT d.run_id, d.dataset, len(c.countries) = len(p.countries) AS same_countries
    FROM run_data d
    JOIN run_countries c USING (run_id)
    JOIN published_countries p ON p.dataset = d.dataset
    WHERE d.protocol = 'fork' AND list_has_all(c.countries, p.countries)
)
SELECT c.run_id, c.dataset, p.country, p.method,
       100 * h.accuracy AS accuracy_pct, 100 * h.ci_low AS ci_low_pct, 100 * h.ci_high AS ci_high_pct,
       p.accuracy_pct AS published_pct,
       CASE WHEN h.accuracy IS NULL THEN 'not evaluated'
            WHEN h.ci_low IS NULL THEN 'no interval'
            WHEN p.accuracy_pct BETWEEN 100 * h.ci_low AND 100 * h.ci_high THEN 'inside'
            ELSE 'outside' END AS published_in_interval
FROM comparable c
JOIN published_results p ON p.dataset = c.dataset AND (p.country <> 'ALL' OR c.same_countries)
LEFT JOIN headline h ON h.run_id = c.run_id AND h.country = p.country AND h.method = p.method;

-- ---------------------------------------------------------------- a study of many countries (charts.py)

-- Per run and country, ICM's headline test claim accuracy beside golden's and the zero-shot baselines,
-- ranked by ICM's accuracy (1 = highest; ties share a rank). What the world map and the ranking table read.
CREATE OR REPLACE VIEW country_ranking AS
WITH h AS (SELECT * FROM headline WHERE country <> 'ALL')
SELECT i.run_id,
       rank() OVER (PARTITION BY i.run_id ORDER BY i.accuracy DESC) AS rank,
       i.country, i.n_test_claims,
       i.accuracy AS icm_accuracy, i.ci_low AS icm_ci_low, i.ci_high AS icm_ci_high,
       g.accuracy AS golden_accuracy, g.ci_low AS golden_ci_low, g.ci_high AS golden_ci_high,
       i.accuracy - g.accuracy AS icm_minus_golden,
       b.accuracy AS zero_shot_base_accuracy, c.accuracy AS zero_shot_chat_accuracy
FROM h i
LEFT JOIN h g ON g.run_id = i.run_id AND g.country = i.country AND g.method = 'golden'
LEFT JOIN h b ON b.run_id = i.run_id AND b.country = i.country AND b.method = 'zero_shot_base'
LEFT JOIN h c ON c.run_id = i.run_id AND c.country = i.country AND c.method = 'zero_shot_chat'
WHERE i.method = 'icm';

-- The countries of the run's GOQA file that data.countries 'all' left out, and why (empty for a run
-- that listed its countries).
CREATE OR REPLACE VIEW countries_left_out AS
SELECT r.run_id, d.country, d.n_groups, d.reason
FROM runs r JOIN dataset_countries d ON d.dataset_id = r.dataset_id
WHERE NOT d.selected;

-- ---------------------------------------------------------------- migrations

-- Warehouses made before schema_version 3 have runs without the ownership columns.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS host VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid INTEGER;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS pid_started DOUBLE;  -- the owner's start time (epoch s): PIDs get reused
ALTER TABLE runs ADD COLUMN IF NOT EXISTS interrupted_attempts INTEGER DEFAULT 0;
-- Before schema_version 14, a run was not part of a study (its study_id is then its run_id, in the views).
ALTER TABLE runs ADD COLUMN IF NOT EXISTS study_id VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS base_model_parameters BIGINT;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS base_model_parameters_source VARCHAR;

-- Before schema_version 7, predictions and demos had no primary key and icm_seed could be NULL:
-- persona_icm.warehouse adds the keys (PRIMARY_KEYS) after this file runs.
-- Before schema_version 6, metrics also held point estimates; the views own them now.
ALTER TABLE metrics DROP COLUMN IF EXISTS n_countries;
ALTER TABLE metrics DROP COLUMN IF EXISTS n_orders;
ALTER TABLE metrics DROP COLUMN IF EXISTS n_test_claims;
ALTER TABLE metrics DROP COLUMN IF EXISTS n_test_groups;
ALTER TABLE metrics DROP COLUMN IF EXISTS claim_acc;
ALTER TABLE metrics DROP COLUMN IF EXISTS claim_acc_std;
ALTER TABLE metrics DROP COLUMN IF EXISTS group_acc;
ALTER TABLE metrics DROP COLUMN IF EXISTS group_acc_std;
ALTER TABLE metrics DROP COLUMN IF EXISTS demo_label_acc;

-- ---------------------------------------------------------------- a study of several base models (after the migrations: they read runs.study_id)

-- Every run's headline per country and pooled (country 'ALL'), keyed by its study and base model:
-- a study (config base_models) is one run per base model; a run before studies is a study of its own.
CREATE OR REPLACE VIEW study_results AS
SELECT coalesce(r.study_id, r.run_id) AS study_id, r.run_id, r.base_model, r.base_model_parameters,
       h.country, h.method, h.n_demos, h.n_seeds, h.n_test_claims, h.accuracy, h.ci_low, h.ci_high,
       h.group_accuracy, h.group_ci_low, h.group_ci_high
FROM runs r JOIN headline h ON h.run_id = r.run_id;

-- Per study, base model and method: the headline accuracy over the countries every model of the run
-- has (test-size weighted, with its 95% interval), and the mean and range of the per-country accuracies.
-- What the accuracy-against-model-size chart reads.
CREATE OR REPLACE VIEW model_comparison AS
WITH per_country AS (
    SELECT run_id, method, count(*)::INTEGER AS n_countries, avg(accuracy) AS mean_country_accuracy,
           min(accuracy) AS min_country_accuracy, max(accuracy) AS max_country_accuracy
    FROM headline WHERE country <> 'ALL' GROUP BY run_id, method
)
SELECT s.study_id, s.run_id, s.base_model, s.base_model_parameters, s.method, p.n_countries, s.n_test_claims,
       s.accuracy, s.ci_low, s.ci_high, s.group_accuracy,
       p.mean_country_accuracy, p.min_country_accuracy, p.max_country_accuracy
FROM study_results s JOIN per_country p ON p.run_id = s.run_id AND p.method = s.method
WHERE s.country = 'ALL';

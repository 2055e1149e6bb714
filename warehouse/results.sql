-- Results of runs: written by the flow process only, one transaction per (run, country, phase).
-- Every row carries run_id; views compute every metric from `predictions` in SQL.

CREATE TABLE IF NOT EXISTS runs (
    run_id            VARCHAR PRIMARY KEY,
    flow_run_id       VARCHAR,
    preset            VARCHAR NOT NULL,
    config_json       JSON NOT NULL,
    base_model        VARCHAR NOT NULL,
    chat_model        VARCHAR,
    countries         VARCHAR[] NOT NULL,
    data_fingerprint  VARCHAR NOT NULL,
    code_version      VARCHAR NOT NULL,
    started_at        TIMESTAMPTZ NOT NULL,
    finished_at       TIMESTAMPTZ,
    status            VARCHAR NOT NULL   -- running | completed | failed
);

CREATE TABLE IF NOT EXISTS icm_labels (
    run_id     VARCHAR NOT NULL,
    country    VARCHAR NOT NULL,
    icm_seed   INTEGER NOT NULL,
    claim_id   VARCHAR NOT NULL,
    group_id   VARCHAR NOT NULL,
    label      INTEGER,              -- NULL: never labelled by the search
    gold       INTEGER NOT NULL,
    PRIMARY KEY (run_id, country, icm_seed, claim_id)
);

CREATE TABLE IF NOT EXISTS icm_trace (
    run_id          VARCHAR NOT NULL,
    country         VARCHAR NOT NULL,
    icm_seed        INTEGER NOT NULL,
    iteration       INTEGER NOT NULL,   -- 0 = after seeding and the initial consistency fix
    claim_id        VARCHAR,
    proposal        INTEGER,
    accepted        BOOLEAN,
    U               DOUBLE NOT NULL,
    P               DOUBLE NOT NULL,
    I               INTEGER NOT NULL,
    T               DOUBLE,
    n_labelled      INTEGER,
    train_accuracy  DOUBLE,             -- against gold, monitoring only
    PRIMARY KEY (run_id, country, icm_seed, iteration)
);

CREATE TABLE IF NOT EXISTS predictions (
    run_id     VARCHAR NOT NULL,
    country    VARCHAR NOT NULL,
    method     VARCHAR NOT NULL,        -- icm | golden | zero_shot_base | zero_shot_chat | random_matched
    n_demos    INTEGER NOT NULL,
    "repeat"   INTEGER NOT NULL,
    icm_seed   INTEGER NOT NULL,
    claim_id   VARCHAR NOT NULL,
    group_id   VARCHAR NOT NULL,
    score      DOUBLE NOT NULL,         -- log P(" True") - log P(" False")
    pred       INTEGER NOT NULL,
    gold       INTEGER NOT NULL,
    PRIMARY KEY (run_id, country, method, n_demos, "repeat", icm_seed, claim_id)
);

CREATE TABLE IF NOT EXISTS model_calls (
    run_id         VARCHAR NOT NULL,
    country        VARCHAR NOT NULL,
    phase          VARCHAR NOT NULL,    -- icm | eval:<method> | ...
    model          VARCHAR NOT NULL,
    call_index     INTEGER NOT NULL,
    n_prompts      INTEGER NOT NULL,
    prompt_tokens  BIGINT NOT NULL,
    cached_tokens  BIGINT,
    wall_seconds   DOUBLE NOT NULL,
    PRIMARY KEY (run_id, country, phase, model, call_index)
);

-- One row per evaluation pass (run, country, method, n_demos, repeat, icm_seed).
-- claim_accuracy: the fork's metric. group_accuracy: per question, the higher-scored option is
-- the gold-top one (ties count as wrong).
CREATE OR REPLACE VIEW accuracy AS
WITH groups AS (
    SELECT run_id, country, method, n_demos, "repeat", icm_seed, group_id,
           arg_max(gold, score) = 1 AND count(DISTINCT score) = count(*) AS group_correct
    FROM predictions
    GROUP BY ALL
)
SELECT p.run_id, p.country, p.method, p.n_demos, p."repeat", p.icm_seed,
       count(*) AS n_claims,
       avg(CASE WHEN p.pred = p.gold THEN 1.0 ELSE 0.0 END) AS claim_accuracy,
       any_value(g.group_accuracy) AS group_accuracy,
       any_value(g.n_groups) AS n_groups
FROM predictions p
JOIN (SELECT run_id, country, method, n_demos, "repeat", icm_seed,
             avg(CASE WHEN group_correct THEN 1.0 ELSE 0.0 END) AS group_accuracy,
             count(*) AS n_groups
      FROM groups GROUP BY ALL) g
  USING (run_id, country, method, n_demos, "repeat", icm_seed)
GROUP BY p.run_id, p.country, p.method, p.n_demos, p."repeat", p.icm_seed;

-- Mean claim accuracy over orders (and ICM seeds) per (run, country, method, n_demos), with a
-- 95% normal interval whose variance adds the two sources of error:
--   orders/seeds: var(pass accuracy) / n_passes
--   test sampling: var over test questions of the question's mean correctness / n_questions
-- (a cluster-robust standard error: claims of one question are not independent); clipped to [0, 1].
CREATE OR REPLACE VIEW results_by_country AS
WITH passes AS (
    SELECT run_id, country, method, n_demos,
           count(*) AS n_passes,
           avg(claim_accuracy) AS accuracy,
           coalesce(stddev_samp(claim_accuracy), 0) AS std_orders,
           avg(group_accuracy) AS group_accuracy,
           any_value(n_claims) AS n_test_claims,
           any_value(n_groups) AS n_test_groups
    FROM accuracy GROUP BY ALL
),
per_question AS (
    SELECT run_id, country, method, n_demos, group_id,
           avg(CASE WHEN pred = gold THEN 1.0 ELSE 0.0 END) AS correct
    FROM predictions GROUP BY ALL
),
sampling AS (
    SELECT run_id, country, method, n_demos,
           coalesce(var_samp(correct), 0) / count(*) AS var_sampling
    FROM per_question GROUP BY ALL
)
SELECT p.run_id, p.country, p.method, p.n_demos, p.n_passes, p.n_test_claims, p.n_test_groups,
       p.accuracy, p.std_orders, p.group_accuracy,
       sqrt(p.std_orders * p.std_orders / p.n_passes + s.var_sampling) AS se,
       greatest(0, p.accuracy - 1.96 * sqrt(p.std_orders * p.std_orders / p.n_passes + s.var_sampling)) AS ci_low,
       least(1, p.accuracy + 1.96 * sqrt(p.std_orders * p.std_orders / p.n_passes + s.var_sampling)) AS ci_high
FROM passes p JOIN sampling s USING (run_id, country, method, n_demos);

-- Countries pooled, weighted by test size, only over (method, n_demos) cells every country of
-- the run has. Errors combine as independent: se = sqrt(sum (w_c * se_c)^2).
CREATE OR REPLACE VIEW results_aggregated AS
WITH n_countries AS (
    SELECT run_id, count(DISTINCT country) AS n FROM predictions GROUP BY run_id
),
cells AS (
    SELECT r.*, (sum(n_test_claims) OVER (PARTITION BY run_id, method, n_demos))::BIGINT AS total_claims,
           count(*) OVER (PARTITION BY run_id, method, n_demos) AS cell_countries
    FROM results_by_country r
)
SELECT c.run_id, c.method, c.n_demos,
       count(*) AS n_countries,
       sum(c.n_test_claims)::BIGINT AS n_test_claims,
       sum(c.accuracy * c.n_test_claims) / sum(c.n_test_claims) AS accuracy,
       sum(c.group_accuracy * c.n_test_claims) / sum(c.n_test_claims) AS group_accuracy,
       sqrt(sum(power(c.se * c.n_test_claims / c.total_claims, 2))) AS se,
       greatest(0, sum(c.accuracy * c.n_test_claims) / sum(c.n_test_claims)
         - 1.96 * sqrt(sum(power(c.se * c.n_test_claims / c.total_claims, 2)))) AS ci_low,
       least(1, sum(c.accuracy * c.n_test_claims) / sum(c.n_test_claims)
         + 1.96 * sqrt(sum(power(c.se * c.n_test_claims / c.total_claims, 2)))) AS ci_high
FROM cells c JOIN n_countries n USING (run_id)
WHERE c.cell_countries = n.n
GROUP BY c.run_id, c.method, c.n_demos;

-- Accuracy against the number of demonstrations for the labelled-demo methods (gold, ICM,
-- random labels matched to ICM's accuracy), per country, with the same intervals.
CREATE OR REPLACE VIEW accuracy_vs_examples AS
SELECT run_id, country, method, n_demos, n_passes, accuracy, std_orders, se, ci_low, ci_high
FROM results_by_country
WHERE method IN ('golden', 'icm', 'random_matched') AND n_demos > 0;

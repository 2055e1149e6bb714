-- The fork's published numbers (view published_results: Llama-3.1-70B base) beside the latest
-- completed run that repeats its experiment (view published_comparison: data.protocol 'fork', the
-- fork's dataset and countries): per country and method, this run's claim accuracy and 95%
-- interval (%), the published number, and whether it falls inside the interval. Empty until such
-- a run has completed (preset fork, the fork's search as it ran; or seed, its data with the
-- consistency term: the column preset says which).
WITH latest AS (
    SELECT run_id, preset FROM runs
    WHERE status = 'completed' AND run_id IN (SELECT run_id FROM published_comparison)
    ORDER BY finished_at DESC LIMIT 1
)
SELECT preset, dataset, country, method, round(accuracy_pct, 1) AS accuracy_pct,
       round(ci_low_pct, 1) AS ci_low_pct, round(ci_high_pct, 1) AS ci_high_pct,
       published_pct, round(accuracy_pct - published_pct, 1) AS difference_pct, published_in_interval
FROM published_comparison JOIN latest USING (run_id)
ORDER BY country = 'ALL', country, method;

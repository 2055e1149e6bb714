-- The latest completed run: headline accuracy (whole pool / zero-shot) per method and country,
-- with 95% bootstrap intervals, and the pooled countries as 'ALL' (view headline).
WITH latest AS (
    SELECT run_id FROM runs WHERE status = 'completed' ORDER BY finished_at DESC LIMIT 1
)
SELECT country, method, n_demos, n_orders, n_test_claims,
       round(accuracy, 3) AS accuracy, round(ci_low, 3) AS ci_low, round(ci_high, 3) AS ci_high,
       round(group_accuracy, 3) AS group_accuracy, round(demo_label_accuracy, 3) AS demo_label_accuracy
FROM headline WHERE run_id = (SELECT run_id FROM latest)
ORDER BY country = 'ALL', country, method;

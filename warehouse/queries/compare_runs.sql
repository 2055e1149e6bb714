-- Two runs side by side: headline accuracy per country and method, and the difference (b - a).
-- Set the run ids (default: the two latest completed runs).
WITH picked AS (
    SELECT run_id, row_number() OVER (ORDER BY finished_at DESC) AS k
    FROM runs WHERE status = 'completed'
),
a AS (SELECT * FROM results_by_country WHERE experiment = 'main' AND run_id = (SELECT run_id FROM picked WHERE k = 2)),
b AS (SELECT * FROM results_by_country WHERE experiment = 'main' AND run_id = (SELECT run_id FROM picked WHERE k = 1))
SELECT coalesce(a.country, b.country) AS country, coalesce(a.method, b.method) AS method,
       a.run_id AS run_a, round(a.accuracy, 3) AS acc_a, b.run_id AS run_b, round(b.accuracy, 3) AS acc_b,
       round(b.accuracy - a.accuracy, 3) AS diff
FROM a FULL JOIN b USING (country, method)
ORDER BY country, method;

-- The latest completed run's headline claim accuracy (%) next to the fork's published numbers
-- (view published_results: Llama-3.1-70B base) for the same dataset, country and method.
-- published_pct is NULL where the fork published nothing comparable (other countries, methods).
-- Our side is the view headline (countries and their pooled 'ALL').
WITH latest AS (
    SELECT run_id, config_json->>'$.data.dataset' AS dataset
    FROM runs WHERE status = 'completed' ORDER BY finished_at DESC LIMIT 1
)
SELECT l.dataset, o.country, o.method, round(100 * o.accuracy, 1) AS accuracy_pct,
       p.accuracy_pct AS published_pct, round(100 * o.accuracy - p.accuracy_pct, 1) AS difference_pct
FROM latest l
JOIN headline o USING (run_id)
LEFT JOIN published_results p ON p.dataset = l.dataset AND p.country = o.country AND p.method = o.method
ORDER BY o.country = 'ALL', o.country, o.method;

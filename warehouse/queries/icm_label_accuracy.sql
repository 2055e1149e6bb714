-- How often the ICM search's final labels agree with gold, per run and country (monitoring:
-- gold never enters the search), with the pool size and the search's final objective.
SELECT l.run_id, l.country, l.icm_seed,
       count(*) FILTER (WHERE l.label IS NOT NULL) AS labelled,
       count(*) AS train_claims,
       round(avg(CASE WHEN l.label = l.gold THEN 1.0 ELSE 0.0 END) FILTER (WHERE l.label IS NOT NULL), 3) AS label_accuracy,
       round(any_value(t.U), 3) AS final_U, any_value(t.I) AS final_I
FROM icm_labels l
LEFT JOIN (SELECT * FROM icm_trace QUALIFY iteration = max(iteration) OVER (PARTITION BY run_id, country, icm_seed)) t
  USING (run_id, country, icm_seed)
GROUP BY l.run_id, l.country, l.icm_seed
ORDER BY l.run_id, l.country, l.icm_seed;

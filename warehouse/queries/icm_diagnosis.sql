-- The latest completed run: per country and ICM seed, U, P and I of the gold labels, of ICM's final
-- labels and of gold flipped under the run's objective (view icm_diagnosis_verdict), how many question
-- groups gold's leave-one-out scores rank right, and the verdict: "search shortfall" (U(ICM) < U(gold))
-- or "objective prefers other labels" (U(ICM) >= U(gold)).
WITH latest AS (
    SELECT run_id FROM runs WHERE status = 'completed' ORDER BY finished_at DESC LIMIT 1
)
SELECT country, icm_seed, verdict, round(icm_label_accuracy, 3) AS icm_label_accuracy, claims,
       round(U_gold, 4) AS U_gold, round(U_icm, 4) AS U_icm, round(U_flipped, 4) AS U_flipped,
       round(P_gold, 4) AS P_gold, round(P_icm, 4) AS P_icm, round(P_flipped, 4) AS P_flipped,
       I_gold, I_icm, I_flipped, gold_ranked_first, groups
FROM icm_diagnosis_verdict WHERE run_id = (SELECT run_id FROM latest)
ORDER BY country, icm_seed;

-- Model cost per run, model and phase (icm search, eval:<method>): calls, prompts, tokens,
-- prefix-cache hits (where the backend reports them) and wall time.
SELECT run_id, model, phase,
       count(*) AS calls, sum(n_prompts) AS prompts, sum(prompt_tokens) AS prompt_tokens,
       sum(cached_tokens) AS cached_tokens,
       round(sum(cached_tokens) / nullif(sum(prompt_tokens), 0), 3) AS cached_share,
       round(sum(wall_seconds), 1) AS wall_seconds,
       round(sum(prompt_tokens) / nullif(sum(wall_seconds), 0)) AS tokens_per_second
FROM model_calls
GROUP BY ALL
ORDER BY run_id, model, phase;

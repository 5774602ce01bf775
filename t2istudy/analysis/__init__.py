"""The analysis of finished runs: statistics (``stats``), comparisons across grids (``comparisons``), tables
(``tables``) and figures (``plots``); it reads runs through ``t2istudy.study.run_results`` and nothing else."""

"""Studies: many independent simulations and what they answer.

Every study builds a list of `runner.Task`s (a scenario as plain data, a policy, a
seed) and hands it to the one runner, which runs them in this process, in a local
process pool or on a Ray cluster; workers build everything (workload, cost model,
engine) from the task itself. Studies never touch the engine directly.

- `runner.py`    the runner (local | ray) and its task / outcome types
- `compare.py`   policies on identical work, aggregated over seeds
- `regress.py`   CI check of policies against a stored baseline
- `reproduce.py` the Seer paper's Table 4 ablation
- `sweep.py`     cartesian grids of scenario overrides × policies × seeds, resumable
- `plan.py`      cheapest fleet and policy for a target RL step time (bounded search)
- `cli.py`       the study commands of `seersim`
"""

"""`kdcanary demo`: two rollouts on a local Ray cluster, watched live, then a report.

run.py     DemoOptions, demo_spec, run_demo (CLI) and run_scenarios (tests)
load.py    LoadGenerator: open-loop steady-rate traffic of held-out snippets
view.py    Sample: one second of status, traffic and cost; the live panel
report.py  summary.md and one chart per rollout
"""

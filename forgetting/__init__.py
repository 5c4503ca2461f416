"""The study's domain code, plain Python: the puzzles, the tiny world, models, the arms' training, evaluation
and the numbers of the report. Nothing here imports Prefect or MLflow, so a notebook can use any of it:

    from forgetting.profiles import load_config
    from forgetting.puzzle_data import generate_puzzles
    dataset = generate_puzzles(load_config("micro").puzzles, "/tmp/puzzles")

The orchestration lives beside it: tasks/ (Prefect tasks, assets, MLflow logging) and flows/ (the flows).
"""

from forgetting.environment import set_cpu_numerics

set_cpu_numerics()  # before torch's first operation in any process that imports the project

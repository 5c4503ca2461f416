"""The study's domain code, plain Python: the puzzles, the tiny world, models, the arms' training, evaluation
and the numbers of the report. Nothing here imports Prefect or MLflow, so a notebook can use any of it:

    from forgetting.profiles import load_config
    from forgetting.puzzle_data import generate_puzzles
    dataset = generate_puzzles(load_config("micro").puzzles, "/tmp/puzzles")

The orchestration lives beside it: tasks/ (Prefect tasks, assets, MLflow logging) and flows/ (the flows).
"""

import os

# Float rounding on the CPU that does not depend on how many threads a process has. MKL's matrix products split
# their sums over the threads (a weight gradient's sum over a batch's tokens comes out otherwise on one thread than
# on two, and a sampled RFT arm then takes another course), except in its strict conditional-reproducibility mode,
# which keeps the machine's own code path (AUTO). An environment variable, read at MKL's first operation: this
# package sets it as it is imported (set_cpu_numerics), a value already set is kept, and FORGETTING_NUMERICS=native
# sets none (how every arm trained before). The other variables that choose a code path are recorded too where set
# by hand (MKL_CBWR=AVX2,STRICT with ATEN_CPU_CAPABILITY=avx2 takes one path on any x86-64 CPU with AVX2; docs/
# design.md, "Float rounding on the CPU").
REPRODUCIBLE_NUMERICS = {"MKL_CBWR": "AUTO,STRICT"}
NUMERICS_VARIABLES = ("MKL_CBWR", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
NUMERICS_MODES = ("reproducible", "native")


def set_cpu_numerics() -> None:
    """REPRODUCIBLE_NUMERICS into the environment where not set already, unless FORGETTING_NUMERICS=native."""
    mode = os.environ.get("FORGETTING_NUMERICS", NUMERICS_MODES[0])
    if mode not in NUMERICS_MODES:
        raise ValueError(f"FORGETTING_NUMERICS: {mode!r} is none of {', '.join(NUMERICS_MODES)}")
    if mode == "reproducible":
        for name, value in REPRODUCIBLE_NUMERICS.items():
            os.environ.setdefault(name, value)


set_cpu_numerics()  # before torch's first operation in any process that imports the project

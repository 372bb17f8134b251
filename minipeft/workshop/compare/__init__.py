"""One table for every method: fine-tune the base with each on the same task, data, steps and seed, and measure
trainable parameters, bytes stored per task, step time, training memory, quality, forgetting and latency.

    from minipeft.workshop.compare import CompareConfig, run_compare, format_table, write_outputs
    result = run_compare(CompareConfig(methods=("lora-all", "bitfit")))
    print(format_table(result)); write_outputs(result, "compare_out")

`python -m minipeft compare` and `tutorials/11_compare_methods.py` run the same code.
"""

from minipeft.workshop.compare.harness import (
    CompareConfig,
    CompareResult,
    llm_config,
    quick_config,
    run_compare,
    time_generation,
)
from minipeft.workshop.compare.recipes import LLM_RATES, METHOD_RECIPES, BuildContext, Recipe, recipe_rate
from minipeft.workshop.compare.report import format_table, save_plot, to_csv, write_outputs

__all__ = ["LLM_RATES", "METHOD_RECIPES", "BuildContext", "CompareConfig", "CompareResult", "Recipe", "format_table",
           "llm_config", "quick_config", "recipe_rate", "run_compare", "save_plot", "time_generation", "to_csv",
           "write_outputs"]

"""Model sources, default tasks, parameter selection and attention fixes."""

from .attention import attention_implementation, ensure_double_backward_attention, math_sdpa
from .hf import HFModule, detect_task, load_hf, minilm_path, wrap_hf_model
from .outputs import SelectOutput
from .params import freeze_except, match_parameters, select_parameters, split_patterns
from .sources import SCHEMES, ModelBundle, load_model_spec, load_state_dict_file, parse_spec
from .tasks import TASK_NAMES, Task, call_model
from .unused import UnusedParameters, exclude_unused, find_unused_parameters

__all__ = [
    "HFModule",
    "ModelBundle",
    "SCHEMES",
    "SelectOutput",
    "TASK_NAMES",
    "Task",
    "UnusedParameters",
    "attention_implementation",
    "call_model",
    "detect_task",
    "ensure_double_backward_attention",
    "exclude_unused",
    "find_unused_parameters",
    "freeze_except",
    "load_hf",
    "load_model_spec",
    "load_state_dict_file",
    "match_parameters",
    "math_sdpa",
    "minilm_path",
    "parse_spec",
    "select_parameters",
    "split_patterns",
    "wrap_hf_model",
]

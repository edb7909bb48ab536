"""Zero-shot segmentation evaluation of any method (mmseg 1.x engine)."""
from .benchmark import (build_benchmark_dataset, class_names, describe, describe_protocol, format_protocol,
                        load_benchmark, prompt_names, select_split)
from .evaluator import (benchmark_from_cfg, build_segmentor, evaluate_background, evaluate_group_oracle, evaluate_seg,
                        run_benchmark)
from .metric import SegIoUMetric
from .report import format_table, write_report
from .segmentor import ZeroShotSegmentor, slide_windows
from .training_free import training_free_postprocess, training_free_predict, training_free_protocol
from .zero_shot import method_options, zero_shot_logits

__all__ = [
    'zero_shot_logits', 'method_options', 'evaluate_seg', 'evaluate_background', 'evaluate_group_oracle', 'build_segmentor',
    'run_benchmark', 'benchmark_from_cfg', 'load_benchmark', 'select_split', 'build_benchmark_dataset',
    'class_names', 'prompt_names', 'describe', 'describe_protocol', 'format_protocol', 'SegIoUMetric',
    'ZeroShotSegmentor',
    'slide_windows', 'format_table', 'write_report'
]

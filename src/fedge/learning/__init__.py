"""The PyTorch side of fedge: datasets, partitioners, models, the profiler, training."""

from fedge.learning.data import (
    ArrayDataset,
    DatasetNotFoundError,
    IndexedDataset,
    from_arrays,
    from_torch_dataset,
    load_digits_dataset,
    make_synthetic,
)
from fedge.learning.datasets import DATASETS, load_dataset
from fedge.learning.fashion import IdxFormatError, load_fashion_mnist, read_idx
from fedge.learning.metrics import classification_metrics, confusion_matrix
from fedge.learning.models import MODELS, blocks, build_model, count_params
from fedge.learning.partition import (
    PARTITIONERS,
    PartitionError,
    class_histogram,
    format_histogram,
    partition,
)
from fedge.learning.profiler import LayerProfile, ModelProfile, profile, profile_blocks
from fedge.learning.resnet import SequentialNet
from fedge.learning.training import (
    EvalResult,
    TrainConfig,
    TrainResult,
    evaluate,
    load_state,
    local_train,
    make_optimizer,
    state_of,
)

__all__ = [
    "DATASETS",
    "MODELS",
    "PARTITIONERS",
    "ArrayDataset",
    "DatasetNotFoundError",
    "EvalResult",
    "IdxFormatError",
    "IndexedDataset",
    "LayerProfile",
    "ModelProfile",
    "PartitionError",
    "SequentialNet",
    "TrainConfig",
    "TrainResult",
    "blocks",
    "build_model",
    "class_histogram",
    "classification_metrics",
    "confusion_matrix",
    "count_params",
    "evaluate",
    "format_histogram",
    "from_arrays",
    "from_torch_dataset",
    "load_dataset",
    "load_digits_dataset",
    "load_fashion_mnist",
    "load_state",
    "local_train",
    "make_optimizer",
    "make_synthetic",
    "partition",
    "profile",
    "profile_blocks",
    "read_idx",
    "state_of",
]

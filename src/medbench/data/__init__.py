"""MedMNIST data: the catalogue, where files live, downloading, and loading into tensors.

Data flows one way: catalogue -> files on disk -> tensors in memory. See docs/data.md.
"""

from medbench.data.catalogue import SIZES, DatasetInfo, dataset_info, list_datasets
from medbench.data.download import download_dataset, ensure_dataset
from medbench.data.loader import MedMNISTData, Split, load_dataset
from medbench.data.locations import dataset_path, missing_data_dir, resolve_data_dir

__all__ = [
    "SIZES",
    "DatasetInfo",
    "MedMNISTData",
    "Split",
    "dataset_info",
    "dataset_path",
    "download_dataset",
    "ensure_dataset",
    "list_datasets",
    "load_dataset",
    "missing_data_dir",
    "resolve_data_dir",
]

"""The pipeline's definition: its stages (graph), the code each runs (codegraph), and dvc.yaml written from them."""

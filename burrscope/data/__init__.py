"""Photos and labels in, model inputs out: names, the labels CSV, image operations, folders, the manifest and the folds.

Nothing here imports torch: the data stages start in a second, and run where no torch is installed."""

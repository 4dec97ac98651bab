"""Networks: backbones and their weights, their blocks, where they run, their inputs, the square's symmetries."""
